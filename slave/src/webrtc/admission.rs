//! What a WHEP peer may ask of this slave, checked on the HTTP side before any work reaches the
//! engine task that paces every viewer's media: the shape of an offer (m-lines, codecs,
//! candidates), trickled candidates per session, unconnected sessions per address, and log
//! lines about refusals (one per reason per interval; the counters keep every refusal).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// m-sections per offer. A WHEP viewer receives one audio and one video track; a browser may add
/// a data channel. 132 m-lines in one small offer cost ~2 MB and milliseconds of CPU each.
pub const MAX_OFFER_MLINES: usize = 4;
/// Payload types (`a=rtpmap`) per m-section. Chromium 156 offers 34 for video and 8 for audio.
pub const MAX_CODECS_PER_MLINE: usize = 64;
/// Remote ICE candidates per session, in the offer and trickled together. ICE-lite needs none
/// (the browser's checks reach us first); a browser gathers a handful per interface.
pub const MAX_CANDIDATES: usize = 32;
/// Sessions that have not connected yet, per client address: half the slave's WebRTC capacity,
/// and at least 20. One viewer has one at a time, but a whole class behind one NAT address
/// presses Watch together (the bench's 250 clients joining within a second from one address
/// had 42 refused at a fixed 20), while one address alone cannot hold every slot.
pub fn max_pending_per_addr(capacity: u32) -> usize {
    (capacity as usize / 2).max(20)
}
/// Unconnected sessions per client address, counted across every engine of the slave (a
/// class's students spread over them).
#[derive(Default)]
pub struct PendingByAddress(Mutex<HashMap<std::net::IpAddr, usize>>);

impl PendingByAddress {
    /// Counts one more unconnected session from `ip` unless `limit` are already counted.
    pub fn try_take(&self, ip: std::net::IpAddr, limit: usize) -> bool {
        let mut m = self.0.lock();
        let n = m.entry(ip).or_default();
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }
    /// That session connected or ended.
    pub fn give_back(&self, ip: std::net::IpAddr) {
        let mut m = self.0.lock();
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// A session that has not connected by then is dropped (the browser went away mid-offer, or
/// never meant to connect). ICE and DTLS take a few round trips: under a second on Wi-Fi.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(8);

/// Why an offer's shape is refused (422 with this text).
#[derive(Debug, PartialEq, Eq)]
pub enum OfferShape {
    TooManyMlines(usize),
    TooManyCodecs(usize),
    TooManyCandidates(usize),
}

impl std::fmt::Display for OfferShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyMlines(n) => write!(
                f,
                "the offer has {n} m-lines; a WHEP viewer needs at most {MAX_OFFER_MLINES}"
            ),
            Self::TooManyCodecs(n) => write!(
                f,
                "an m-line of the offer lists {n} payload types; at most {MAX_CODECS_PER_MLINE} are taken"
            ),
            Self::TooManyCandidates(n) => write!(
                f,
                "the offer carries {n} ICE candidates; at most {MAX_CANDIDATES} per session"
            ),
        }
    }
}

/// Counts what an SDP offer asks for, line by line, before it is parsed. Returns the number of
/// candidates it carries.
pub fn check_offer(sdp: &str) -> Result<usize, OfferShape> {
    let (mut mlines, mut codecs, mut candidates) = (0usize, 0usize, 0usize);
    for line in sdp.lines() {
        let line = line.trim_start();
        if line.starts_with("m=") {
            mlines += 1;
            if mlines > MAX_OFFER_MLINES {
                return Err(OfferShape::TooManyMlines(count_prefix(sdp, "m=")));
            }
            codecs = 0;
        } else if line.starts_with("a=rtpmap:") {
            codecs += 1;
            if codecs > MAX_CODECS_PER_MLINE {
                return Err(OfferShape::TooManyCodecs(codecs));
            }
        } else if line.starts_with("a=candidate:") {
            candidates += 1;
        }
    }
    if candidates > MAX_CANDIDATES {
        return Err(OfferShape::TooManyCandidates(candidates));
    }
    Ok(candidates)
}

/// `a=candidate:` lines in a trickle-ICE fragment, counted before any is parsed.
pub fn count_candidates(fragment: &str) -> usize {
    count_prefix(fragment, "a=candidate:")
}

fn count_prefix(text: &str, prefix: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with(prefix))
        .count()
}

/// One log line per refusal reason per interval, saying how many were not logged: whoever sends
/// refused offers does not set the log volume. The metrics count each one.
pub struct RefusalLog {
    every: Duration,
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RefusalLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this refusal is to be logged, `n` being the ones left unlogged since the
    /// last line of its reason.
    pub fn admit(&self, reason: &str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        match last.get_mut(reason) {
            Some((at, skipped)) if now.duration_since(*at) < self.every => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                let n = *skipped;
                *at = now;
                *skipped = 0;
                Some(n)
            }
            None => {
                last.insert(reason.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(mlines: usize, codecs: usize, candidates: usize) -> String {
        let mut s = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        for m in 0..mlines {
            s += &format!("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{m}\r\n");
            for c in 0..codecs {
                s += &format!("a=rtpmap:{} H264/90000\r\n", 96 + c);
            }
        }
        for c in 0..candidates {
            s += &format!("a=candidate:{c} 1 udp 2122260223 10.0.0.{c} 5000 typ host\r\n");
        }
        s
    }

    #[test]
    fn an_offer_is_bounded_by_mlines_codecs_and_candidates() {
        assert_eq!(check_offer(&offer(2, 37, 4)), Ok(4));
        assert_eq!(
            check_offer(&offer(
                MAX_OFFER_MLINES,
                MAX_CODECS_PER_MLINE,
                MAX_CANDIDATES
            )),
            Ok(MAX_CANDIDATES)
        );
        assert_eq!(
            check_offer(&offer(132, 1, 0)),
            Err(OfferShape::TooManyMlines(132))
        );
        assert_eq!(
            check_offer(&offer(1, MAX_CODECS_PER_MLINE + 1, 0)),
            Err(OfferShape::TooManyCodecs(MAX_CODECS_PER_MLINE + 1))
        );
        assert_eq!(
            check_offer(&offer(2, 4, MAX_CANDIDATES + 1)),
            Err(OfferShape::TooManyCandidates(MAX_CANDIDATES + 1))
        );
    }

    #[test]
    fn pending_sessions_per_address_are_counted_and_given_back() {
        let p = PendingByAddress::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(p.try_take(a, 2) && p.try_take(a, 2));
        assert!(!p.try_take(a, 2), "a third from one address is refused");
        assert!(p.try_take(b, 2), "another address has its own count");
        p.give_back(a);
        assert!(p.try_take(a, 2));
        p.give_back(a);
        p.give_back(a);
        p.give_back(a);
        assert!(
            p.0.lock().get(&a).is_none(),
            "nothing kept for an address with none"
        );
    }

    #[test]
    fn candidates_in_a_fragment_are_counted_before_parsing() {
        let frag = "a=ice-ufrag:x\r\na=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\n\
                    a=candidate:not even parseable\r\na=end-of-candidates\r\n";
        assert_eq!(count_candidates(frag), 2);
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_skipped() {
        let log = RefusalLog::new(Duration::from_millis(200));
        assert_eq!(log.admit("full"), Some(0));
        assert_eq!(log.admit("full"), None);
        assert_eq!(log.admit("full"), None);
        assert_eq!(
            log.admit("bad_offer"),
            Some(0),
            "each reason has its own line"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.admit("full"), Some(2));
    }
}
