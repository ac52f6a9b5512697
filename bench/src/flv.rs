//! FLV files for the bench's publishers: the reader is the media crate's.

use anyhow::Context;
pub use media::flv_file::{FlvFile, TagKind};

pub fn read(path: &std::path::Path) -> anyhow::Result<FlvFile> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    FlvFile::parse(data.into()).with_context(|| format!("parsing {}", path.display()))
}
