pub mod cluster;
pub mod recordings;
#[cfg(test)]
mod tests;
pub mod token;
