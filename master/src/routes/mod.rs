pub mod cluster;
#[cfg(test)]
mod tests;
pub mod token;
