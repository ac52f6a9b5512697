pub mod cluster;
pub mod token;
