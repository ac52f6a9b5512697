//! A recording on disk, crash-safe by construction:
//!
//! ```text
//! RECORD_DIR/<id>/init<n>.mp4      the CMAF init segments (written before any segment uses them)
//! RECORD_DIR/<id>/seg<msn>.m4s     one CMAF segment each, written to a temporary name and renamed
//! RECORD_DIR/<id>/index.jsonl      one line per segment, appended after its file is in place
//! RECORD_DIR/<id>/index.m3u8       a VOD playlist of what is on disk, replaced (rename) each segment
//! ```
//!
//! A segment file appears whole or not at all (rename is atomic), so after `kill -9` at most the
//! segment being built is lost, and `index.m3u8` (fragmented MP4 needs no `moov` at the end)
//! plays in any HLS player with no repair step. Every index line ends with the CRC-32 of its
//! JSON: a line torn by a crash fails its check and is ignored with everything after it, as is a
//! line whose segment file is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The first line of an index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub v: u32,
    /// The live stream, `live/<name>`.
    pub path: String,
    pub started_ms: u64,
    pub node_id: String,
}

/// One recorded segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentEntry {
    pub msn: u64,
    pub duration: f64,
    pub pdt_ms: u64,
    #[serde(default)]
    pub discontinuity: bool,
    pub init_id: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
enum Line {
    Header(Header),
    Segment(SegmentEntry),
    End { end_ms: u64 },
}

/// What an index says, as far as it checks out.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub id: String,
    pub dir: PathBuf,
    pub header: Header,
    pub segments: Vec<SegmentEntry>,
    /// The class ended cleanly (an end line); a crashed recording has none.
    pub ended: bool,
}

impl Recording {
    pub fn duration_s(&self) -> f64 {
        self.segments.iter().map(|s| s.duration).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn init_file(&self, id: u32) -> PathBuf {
        self.dir.join(init_name(id))
    }

    pub fn segment_file(&self, msn: u64) -> PathBuf {
        self.dir.join(segment_name(msn))
    }
}

/// The live stream's names (`media::hls::names`), so one parser serves both.
pub fn init_name(id: u32) -> String {
    format!("init{id}.mp4")
}

pub fn segment_name(msn: u64) -> String {
    format!("seg{msn}.m4s")
}

fn encode(line: &Line) -> Vec<u8> {
    let json = serde_json::to_string(line).expect("index lines serialize");
    format!("{json}\t{:08x}\n", crc32fast::hash(json.as_bytes())).into_bytes()
}

/// A line as written by [`encode`], or `None` when torn or damaged.
fn decode(line: &str) -> Option<Line> {
    let (json, crc) = line.rsplit_once('\t')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

/// Writes one recording. Every method is a few syscalls; callers run it off the async threads.
pub struct RecordingWriter {
    dir: PathBuf,
    index: File,
    header: Header,
    segments: Vec<SegmentEntry>,
    inits: Vec<u32>,
}

impl RecordingWriter {
    /// Starts a recording in `root/<id>`.
    pub fn create(root: &Path, id: &str, header: Header) -> std::io::Result<Self> {
        let dir = root.join(id);
        fs::create_dir_all(&dir)?;
        let mut index = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join("index.jsonl"))?;
        index.write_all(&encode(&Line::Header(header.clone())))?;
        index.sync_data()?;
        Ok(Self {
            dir,
            index,
            header,
            segments: Vec::new(),
            inits: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segments(&self) -> &[SegmentEntry] {
        &self.segments
    }

    /// Writes the init segment `id` once.
    pub fn init(&mut self, id: u32, data: &[u8]) -> std::io::Result<()> {
        if self.inits.contains(&id) {
            return Ok(());
        }
        write_atomic(&self.dir.join(init_name(id)), &[data])?;
        self.inits.push(id);
        Ok(())
    }

    /// Appends a segment (its bytes as parts back to back), then its index line, then the
    /// playlist of everything so far.
    pub fn segment(&mut self, entry: SegmentEntry, parts: &[&[u8]]) -> std::io::Result<()> {
        write_atomic(&self.dir.join(segment_name(entry.msn)), parts)?;
        self.index
            .write_all(&encode(&Line::Segment(entry.clone())))?;
        self.index.sync_data()?;
        self.segments.push(entry);
        self.write_playlist()
    }

    /// The class ended: an end line.
    pub fn finish(&mut self, end_ms: u64) -> std::io::Result<()> {
        self.index.write_all(&encode(&Line::End { end_ms }))?;
        self.index.sync_data()
    }

    fn write_playlist(&self) -> std::io::Result<()> {
        let text = media::hls::vod::render(&self.segments_view(), "");
        write_atomic(&self.dir.join("index.m3u8"), &[text.as_bytes()])
    }

    fn segments_view(&self) -> Vec<media::hls::vod::VodSegment> {
        view(&self.segments)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
}

pub fn view(segments: &[SegmentEntry]) -> Vec<media::hls::vod::VodSegment> {
    segments
        .iter()
        .map(|s| media::hls::vod::VodSegment {
            msn: s.msn,
            duration: s.duration,
            pdt_ms: s.pdt_ms,
            discontinuity: s.discontinuity,
            init_id: s.init_id,
        })
        .collect()
}

/// Writes `chunks` to `path` through a temporary file and a rename, synced, so that `path` is
/// either absent or whole.
fn write_atomic(path: &Path, chunks: &[&[u8]]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    for c in chunks {
        f.write_all(c)?;
    }
    f.sync_data()?;
    fs::rename(&tmp, path)
}

/// Reads the recording in `dir`: the index lines that check out, up to the first that does not
/// or whose segment file is missing. `None` when there is no valid header.
pub fn read(dir: &Path) -> Option<Recording> {
    let id = dir.file_name()?.to_str()?.to_string();
    let f = File::open(dir.join("index.jsonl")).ok()?;
    let mut lines = std::io::BufReader::new(f).lines();
    let Some(Line::Header(header)) = decode(&lines.next()?.ok()?) else {
        return None;
    };
    let mut rec = Recording {
        id,
        dir: dir.to_path_buf(),
        header,
        segments: Vec::new(),
        ended: false,
    };
    for line in lines {
        match line.ok().as_deref().and_then(decode) {
            Some(Line::Segment(s))
                if rec.segment_file(s.msn).is_file() && rec.init_file(s.init_id).is_file() =>
            {
                rec.segments.push(s)
            }
            Some(Line::End { .. }) => {
                rec.ended = true;
                break;
            }
            _ => break,
        }
    }
    Some(rec)
}

/// Every recording under `root`, oldest first.
pub fn scan(root: &Path) -> Vec<Recording> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut all: Vec<Recording> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| read(&e.path()))
        .collect();
    all.sort_by_key(|r| r.header.started_ms);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cc-rec-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn header() -> Header {
        Header {
            v: 1,
            path: "live/class".into(),
            started_ms: 1_000,
            node_id: "n1".into(),
        }
    }

    fn seg(msn: u64) -> SegmentEntry {
        SegmentEntry {
            msn,
            duration: 1.0,
            pdt_ms: 1_000 + (msn - 10) * 1_000,
            discontinuity: false,
            init_id: 0,
            bytes: 4,
        }
    }

    #[test]
    fn a_recording_reads_back_and_its_playlist_lists_every_segment() {
        let r = root("roundtrip");
        let mut w = RecordingWriter::create(&r, "class-1000", header()).unwrap();
        w.init(0, b"init").unwrap();
        for msn in 10..13 {
            w.segment(seg(msn), &[b"ab", b"cd"]).unwrap();
        }
        w.finish(5_000).unwrap();
        let rec = read(&r.join("class-1000")).unwrap();
        assert_eq!(rec.header, header());
        assert_eq!(rec.segments, vec![seg(10), seg(11), seg(12)]);
        assert!(rec.ended);
        assert_eq!(fs::read(rec.segment_file(11)).unwrap(), b"abcd");
        let pl = fs::read_to_string(r.join("class-1000/index.m3u8")).unwrap();
        assert_eq!(pl.matches("seg1").count(), 3);
        assert!(pl.contains("#EXT-X-ENDLIST"));
        assert_eq!(scan(&r).len(), 1);
        fs::remove_dir_all(r).ok();
    }

    #[test]
    fn a_torn_index_line_and_a_missing_segment_are_ignored() {
        let r = root("torn");
        let mut w = RecordingWriter::create(&r, "class-1000", header()).unwrap();
        w.init(0, b"init").unwrap();
        w.segment(seg(10), &[b"ab"]).unwrap();
        w.segment(seg(11), &[b"ab"]).unwrap();
        drop(w);
        let index = r.join("class-1000/index.jsonl");
        // A crash in the middle of the next line: half of it on disk.
        let half = &encode(&Line::Segment(seg(12)))[..30];
        OpenOptions::new()
            .append(true)
            .open(&index)
            .unwrap()
            .write_all(half)
            .unwrap();
        let rec = read(&r.join("class-1000")).unwrap();
        assert_eq!(rec.segments.len(), 2);
        assert!(!rec.ended);
        // A flipped byte in a line fails its CRC; a line whose file is gone stops the list.
        let text = fs::read_to_string(&index).unwrap();
        fs::write(&index, text.replacen("\"msn\":11", "\"msn\":19", 1)).unwrap();
        assert_eq!(read(&r.join("class-1000")).unwrap().segments.len(), 1);
        fs::write(&index, text).unwrap();
        fs::remove_file(r.join("class-1000/seg11.m4s")).unwrap();
        assert_eq!(read(&r.join("class-1000")).unwrap().segments.len(), 1);
        fs::remove_dir_all(r).ok();
    }
}
