pub mod cluster;
pub mod obs;
pub mod recordings;
pub mod teacher;
#[cfg(test)]
mod tests;
pub mod token;
