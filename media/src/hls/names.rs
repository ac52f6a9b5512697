//! The names in a stream's URL space: which file a request names (`index.m3u8`,
//! `init<N>.mp4`, `seg<M>.m4s`, `part<M>.<I>.m4s`) and the query parameters a slave acts on.
//! Parsed strictly: anything else is no file at all (media lives in memory, never on a path).

use std::borrow::Cow;

/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query string too long")]
    TooLong,
    #[error("_HLS_msn must be a non-negative integer")]
    BadMsn,
    #[error("_HLS_part must be a non-negative integer")]
    BadPart,
    #[error("_HLS_part requires _HLS_msn")]
    PartWithoutMsn,
}

/// The files a stream directory holds.
#[derive(Debug, PartialEq)]
pub enum HlsFile {
    Playlist,
    Init(u32),
    Segment(u64),
    Part(u64, usize),
}

impl HlsFile {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "index.m3u8" {
            return Some(HlsFile::Playlist);
        }
        fn num(t: &str) -> Option<&str> {
            (!t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit())).then_some(t)
        }
        if let Some(id) = s.strip_prefix("init").and_then(|r| r.strip_suffix(".mp4")) {
            return num(id)?.parse().ok().map(HlsFile::Init);
        }
        if let Some(m) = s.strip_prefix("seg").and_then(|r| r.strip_suffix(".m4s")) {
            return num(m)?.parse().ok().map(HlsFile::Segment);
        }
        if let Some(r) = s.strip_prefix("part").and_then(|r| r.strip_suffix(".m4s")) {
            let (m, i) = r.split_once('.')?;
            return Some(HlsFile::Part(num(m)?.parse().ok()?, num(i)?.parse().ok()?));
        }
        None
    }
}

/// The query parameters we act on. Unknown ones are ignored, as players add their own.
/// Values borrow from the request unless they had to be percent-decoded.
#[derive(Debug, Default, PartialEq)]
pub struct HlsQuery<'a> {
    pub jwt: Option<Cow<'a, str>>,
    /// A media ticket (`t=`), as listed after every URI of a viewer's playlist.
    pub ticket: Option<Cow<'a, str>>,
    pub msn: Option<u64>,
    pub part: Option<usize>,
    /// `_HLS_skip=YES` (or `v2`): a delta update is asked for.
    pub skip: bool,
}

impl<'a> HlsQuery<'a> {
    pub fn parse(raw: Option<&'a str>) -> Result<Self, QueryError> {
        let mut q = HlsQuery::default();
        let Some(raw) = raw else { return Ok(q) };
        if raw.len() > MAX_QUERY_LEN {
            return Err(QueryError::TooLong);
        }
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match &*k {
                "jwt" | "token" => q.jwt = Some(v),
                "t" => q.ticket = Some(v),
                "_HLS_msn" => q.msn = Some(v.parse().map_err(|_| QueryError::BadMsn)?),
                "_HLS_part" => q.part = Some(v.parse().map_err(|_| QueryError::BadPart)?),
                "_HLS_skip" => q.skip = v == "YES" || v == "v2",
                _ => {}
            }
        }
        if q.part.is_some() && q.msn.is_none() {
            return Err(QueryError::PartWithoutMsn);
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(HlsFile::parse("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(HlsFile::parse("init3.mp4"), Some(HlsFile::Init(3)));
        assert_eq!(HlsFile::parse("seg12.m4s"), Some(HlsFile::Segment(12)));
        assert_eq!(HlsFile::parse("part12.4.m4s"), Some(HlsFile::Part(12, 4)));
        for bad in [
            "",
            "seg.m4s",
            "seg-1.m4s",
            "part1.m4s",
            "part1..m4s",
            "../x",
            "seg1.m4s/..",
            "init.mp4",
            "seg99999999999999999999.m4s",
        ] {
            assert_eq!(HlsFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries() {
        assert_eq!(HlsQuery::parse(None).unwrap(), HlsQuery::default());
        let q = HlsQuery::parse(Some("jwt=a.b.c&_HLS_msn=5&_HLS_part=2&x=1")).unwrap();
        assert_eq!(
            (q.jwt.as_deref(), q.msn, q.part),
            (Some("a.b.c"), Some(5), Some(2))
        );
        assert!(HlsQuery::parse(Some("_HLS_skip=YES")).unwrap().skip);
        assert!(!HlsQuery::parse(Some("_HLS_skip=NO")).unwrap().skip);
        let q = HlsQuery::parse(Some("t=123.abc&jwt=a%2Eb")).unwrap();
        assert_eq!(
            (q.ticket.as_deref(), q.jwt.as_deref()),
            (Some("123.abc"), Some("a.b"))
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_part=1")).unwrap_err(),
            QueryError::PartWithoutMsn
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_msn=-1")).unwrap_err(),
            QueryError::BadMsn
        );
        assert_eq!(
            HlsQuery::parse(Some("_HLS_msn=abc")).unwrap_err(),
            QueryError::BadMsn
        );
        assert_eq!(
            HlsQuery::parse(Some(&"x".repeat(9000))).unwrap_err(),
            QueryError::TooLong
        );
    }
}
