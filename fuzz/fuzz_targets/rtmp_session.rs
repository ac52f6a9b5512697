//! `RtmpSession` (the sans-IO adapter over rml_rtmp) on hostile bytes.
//!
//! Input layout: `[flags, split_seed, payload..]`.
//! - `flags & 1`: feed a fixed, valid C0/C1/C2 first, so that `payload` lands in the chunk
//!   layer; otherwise `payload` starts at the handshake.
//! - `flags >> 1`: accept/reject policy for the requests the session raises (bit i of the
//!   policy, cycling, decides the i-th request: 1 = accept, 0 = reject).
//! - `payload` is cut into several `feed` calls at lengths drawn from `split_seed`.
//!
//! The caller contract is mirrored from `ingest::Connection`: an `Err` from `feed` or `accept`
//! closes the connection, so nothing more is fed after one; a reject also closes it.
//!
//! Panics: rml_rtmp may panic on hostile input, and the adapter's `catch_unwind` turning that
//! into `RtmpError::Panic` is the design. libfuzzer-sys installs a panic hook that aborts on
//! *every* panic, caught or not, so this target replaces the hook (in `init`) with one that
//! only records the message. An uncaught panic still unwinds out of the adapter into the
//! `catch_unwind` below, which prints it and aborts: that is a crash. Builds must therefore
//! use `panic=unwind` (cargo-fuzz's default; never pass `-Cpanic=abort` for this target).
#![no_main]

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use libfuzzer_sys::fuzz_target;
use media::rtmp::{RtmpError, RtmpEvent, RtmpLimits, RtmpSession};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// C0 (version 3) + C1 with no FP9 digest (all zero: "original" handshake) + C2. rml_rtmp does
/// not verify C2, so a fixed one completes the handshake deterministically.
fn handshake() -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 2 * 1536);
    v.push(3);
    v.extend(std::iter::repeat_n(0u8, 1536));
    v.extend(std::iter::repeat_n(0u8, 1536));
    v
}

struct Splitter(u64);

impl Splitter {
    fn next_len(&mut self) -> usize {
        // xorshift64; lengths 1..=4096 with a bias to small reads, like TCP segments.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        match self.0 % 4 {
            0 => 1 + (self.0 >> 8) as usize % 16,
            1 => 1 + (self.0 >> 8) as usize % 256,
            _ => 1 + (self.0 >> 8) as usize % 4096,
        }
    }
}

/// What the ingest loop does with an event; returns false when the connection would close.
fn handle(
    s: &mut RtmpSession,
    ev: RtmpEvent,
    policy: u8,
    nreq: &mut u32,
    pending: &mut Vec<RtmpEvent>,
) -> Result<bool, RtmpError> {
    let request_id = match &ev {
        RtmpEvent::Connect { request_id, .. }
        | RtmpEvent::Publish { request_id, .. }
        | RtmpEvent::Play { request_id, .. } => *request_id,
        RtmpEvent::Video { data, .. } | RtmpEvent::Audio { data, .. } => {
            std::hint::black_box(data.len());
            return Ok(true);
        }
        RtmpEvent::PublishFinished { .. } | RtmpEvent::Metadata => return Ok(true),
    };
    let accept = policy >> (*nreq % 7) & 1 == 1;
    *nreq += 1;
    if accept {
        pending.extend(s.accept(request_id)?);
        Ok(true)
    } else {
        s.reject(request_id, "NetStream.Publish.BadName", "fuzz")?;
        Ok(false)
    }
}

fn run(data: &[u8]) {
    let [flags, seed, payload @ ..] = data else {
        return;
    };
    let limits = RtmpLimits {
        // Small enough that the fuzzer can reach the limits.
        max_message_bytes: 64 * 1024,
        max_message_bytes_before_publish: 16 * 1024,
        max_chunk_size: 1 << 16,
    };
    let mut s = RtmpSession::new(limits);
    let policy = flags >> 1;
    let mut nreq = 0u32;
    if flags & 1 == 1 {
        let evs = s.feed(&handshake()).expect("fixed handshake is valid");
        assert!(evs.is_empty());
        assert!(s.handshake_done(), "fixed handshake completes");
        assert!(!s.take_output().is_empty(), "S0/S1/S2 are sent");
    }
    let mut split = Splitter(u64::from(*seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut rest = payload;
    while !rest.is_empty() {
        let n = split.next_len().min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let events = match s.feed(chunk) {
            Ok(e) => e,
            Err(_) => return,
        };
        let _ = s.take_output();
        let mut pending = events;
        while !pending.is_empty() {
            let mut more = Vec::new();
            for ev in pending {
                match handle(&mut s, ev, policy, &mut nreq, &mut more) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                }
                let _ = s.take_output();
            }
            pending = more;
        }
    }
}

fuzz_target!(
    init: {
        // Replace libfuzzer-sys's abort-on-any-panic hook; see the module docs.
        // CLASSCAST_FUZZ_SHOW_CAUGHT=1 prints every panic, also the contained ones (=2: with
        // a backtrace).
        let show = std::env::var("CLASSCAST_FUZZ_SHOW_CAUGHT").ok();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(level) = &show {
                eprintln!("panic (caught by the adapter unless reported below): {info}");
                if level == "2" {
                    eprintln!("{}", std::backtrace::Backtrace::force_capture());
                }
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        }));
    },
    |data: &[u8]| {
        LAST_PANIC.with(|p| p.borrow_mut().take());
        if catch_unwind(AssertUnwindSafe(|| run(data))).is_err() {
            let msg = LAST_PANIC.with(|p| p.borrow_mut().take());
            eprintln!("uncaught panic escaped RtmpSession: {}", msg.unwrap_or_default());
            std::process::abort();
        }
    }
);
