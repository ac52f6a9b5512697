//! A class's messages, in the one order the class's origin gives them, and [`ClassChat`], the
//! copy each slave keeps beside the class's stream. The origin appends
//! (numbering each event); an edge mirrors the origin's events with their numbers. Who sees
//! what (Q&A or chat), who may still post (mutes), and how fast a viewer may post are decided
//! here, without IO, so every rule is a unit test.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::sync::broadcast;

use serde::{Deserialize, Serialize};

/// Longest message, in characters.
pub const MAX_TEXT: usize = 500;
/// Events kept per class in memory; a reader resuming from before the oldest gets the oldest on.
pub const MAX_EVENTS: usize = 5_000;
/// A viewer may post `BURST` messages at once, then one per `REFILL_MS`.
pub const BURST: f64 = 3.0;
pub const REFILL_MS: f64 = 2_000.0;
/// Events queued per reader before it is cut off (it resumes by id from the log).
const FANOUT: usize = 1024;
/// Viewers whose posting rate is remembered per slave and class (the oldest forgotten first).
const MAX_RATE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A question or message (a student's), or an answer to everyone (the teacher's).
    Message {
        from: String,
        teacher: bool,
        text: String,
    },
    /// The teacher hides a message for everyone.
    Hide { message: u64 },
    /// The teacher pins a message (or unpins with `None`).
    Pin { message: Option<u64> },
    /// The teacher mutes a student (by name) for the rest of the class.
    Mute { name: String },
    /// Whether students see each other's messages (chat) or only the teacher's (Q&A).
    Mode { chat: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the class's order, from 1.
    pub id: u64,
    /// When the origin took it (Unix ms): the replay's timeline, and the delivery-lag metric.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why a post is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Empty,
    TooLong,
    Muted,
    /// Seconds until the viewer may post again.
    TooFast(u64),
}

#[derive(Debug, Default)]
pub struct ChatLog {
    events: VecDeque<Arc<Event>>,
    last_id: u64,
    chat_mode: bool,
    muted: HashSet<String>,
    /// Per viewer: tokens left and when they were counted.
    rates: HashMap<String, (f64, Instant)>,
}

impl ChatLog {
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    pub fn chat_mode(&self) -> bool {
        self.chat_mode
    }

    pub fn is_muted(&self, name: &str) -> bool {
        self.muted.contains(name)
    }

    /// Checks a post before it is sent on: text, mute, and the viewer's rate (which it spends).
    pub fn admit(
        &mut self,
        viewer: &str,
        name: &str,
        text: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        check_text(text)?;
        if self.muted.contains(name) {
            return Err(Refusal::Muted);
        }
        if !self.rates.contains_key(viewer) && self.rates.len() >= MAX_RATE_ENTRIES {
            let oldest = self
                .rates
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.rates.remove(&k);
            }
        }
        let (tokens, at) = self.rates.entry(viewer.to_string()).or_insert((BURST, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_millis() as f64 / REFILL_MS).min(BURST);
        *at = now;
        if refilled < 1.0 {
            *tokens = refilled;
            let wait_ms = (1.0 - refilled) * REFILL_MS;
            return Err(Refusal::TooFast((wait_ms / 1000.0).ceil().max(1.0) as u64));
        }
        *tokens = refilled - 1.0;
        Ok(())
    }

    /// The origin numbers `kind` and keeps it.
    pub fn append(&mut self, kind: EventKind, at_ms: u64) -> Arc<Event> {
        let e = Arc::new(Event {
            id: self.last_id + 1,
            at_ms,
            kind,
        });
        self.keep(e.clone());
        e
    }

    /// An edge keeps the origin's event as numbered there; one it has already is skipped.
    pub fn mirror(&mut self, e: Arc<Event>) -> bool {
        if e.id <= self.last_id {
            return false;
        }
        self.keep(e);
        true
    }

    fn keep(&mut self, e: Arc<Event>) {
        self.last_id = e.id;
        match &e.kind {
            EventKind::Mute { name } => {
                self.muted.insert(name.clone());
            }
            EventKind::Mode { chat } => self.chat_mode = *chat,
            EventKind::Message { .. } | EventKind::Hide { .. } | EventKind::Pin { .. } => {}
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Events after `after`, in order (all the log keeps of them).
    pub fn since(&self, after: u64) -> Vec<Arc<Event>> {
        let start = self.events.partition_point(|e| e.id <= after);
        self.events.range(start..).cloned().collect()
    }
}

/// One class's messages on this slave, and the readers' channel.
pub struct ClassChat {
    pub log: parking_lot::Mutex<ChatLog>,
    tx: broadcast::Sender<Arc<Event>>,
    /// An edge's link to its upstream's log runs.
    pub linked: AtomicBool,
}

impl Default for ClassChat {
    fn default() -> Self {
        Self {
            log: Default::default(),
            tx: broadcast::channel(FANOUT).0,
            linked: AtomicBool::new(false),
        }
    }
}

impl ClassChat {
    /// What a reader resuming after `after` gets first, and the channel of what follows, taken
    /// together so that nothing falls between them.
    pub fn subscribe(&self, after: u64) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let log = self.log.lock();
        (log.since(after), self.tx.subscribe())
    }

    pub fn append(&self, kind: EventKind) -> Arc<Event> {
        let mut log = self.log.lock();
        let e = log.append(kind, common::now_unix_ms());
        let _ = self.tx.send(e.clone());
        e
    }

    pub fn mirror(&self, e: Arc<Event>) {
        let mut log = self.log.lock();
        if log.mirror(e.clone()) {
            let _ = self.tx.send(e);
        }
    }

    /// Events after `after` (what the recorder writes next).
    pub fn since(&self, after: u64) -> Vec<Arc<Event>> {
        self.log.lock().since(after)
    }

    pub fn readers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Who reads: the teacher sees everything; a student sees the teacher's messages, the
/// teacher's actions, their own messages, and other students' only in chat mode.
pub fn visible(e: &Event, teacher: bool, name: &str, chat_mode: bool) -> bool {
    match &e.kind {
        EventKind::Message {
            from, teacher: t, ..
        } => teacher || *t || from == name || chat_mode,
        _ => true,
    }
}

/// One message as a replay shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayMessage {
    pub id: u64,
    pub at_ms: u64,
    pub from: String,
    pub teacher: bool,
    pub text: String,
}

/// What a replay of the class shows any viewer: the teacher's messages, and students' messages
/// sent while the class was in chat mode (a Q&A question went to the teacher only), less every
/// message the teacher hid, at any time.
pub fn replay(events: &[Event]) -> Vec<ReplayMessage> {
    let mut chat_mode = false;
    let mut hidden = HashSet::new();
    let mut out = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Mode { chat } => chat_mode = *chat,
            EventKind::Hide { message } => {
                hidden.insert(*message);
            }
            EventKind::Message {
                from,
                teacher,
                text,
            } if *teacher || chat_mode => out.push(ReplayMessage {
                id: e.id,
                at_ms: e.at_ms,
                from: from.clone(),
                teacher: *teacher,
                text: text.clone(),
            }),
            _ => {}
        }
    }
    out.retain(|m| !hidden.contains(&m.id));
    out
}

pub fn check_text(text: &str) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::Empty);
    }
    if text.chars().count() > MAX_TEXT {
        return Err(Refusal::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(from: &str, teacher: bool) -> EventKind {
        EventKind::Message {
            from: from.into(),
            teacher,
            text: "hi".into(),
        }
    }

    #[test]
    fn the_origin_numbers_and_an_edge_mirrors_without_duplicates() {
        let mut origin = ChatLog::default();
        let a = origin.append(msg("ann", false), 1);
        let b = origin.append(msg("teacher", true), 2);
        assert_eq!((a.id, b.id), (1, 2));
        let mut edge = ChatLog::default();
        assert!(edge.mirror(a.clone()));
        assert!(!edge.mirror(a));
        assert!(edge.mirror(b));
        assert_eq!(edge.since(0).len(), 2);
        assert_eq!(edge.since(1)[0].id, 2);
        assert!(edge.since(2).is_empty());
    }

    #[test]
    fn students_see_answers_and_their_own_questions_unless_chat() {
        let mut log = ChatLog::default();
        let q = log.append(msg("ann", false), 1);
        let ans = log.append(msg("teacher", true), 2);
        assert!(visible(&q, true, "teacher", false));
        assert!(visible(&q, false, "ann", false));
        assert!(!visible(&q, false, "bob", false));
        assert!(visible(&ans, false, "bob", false));
        log.append(EventKind::Mode { chat: true }, 3);
        assert!(visible(&q, false, "bob", log.chat_mode()));
    }

    #[test]
    fn text_mute_and_rate_are_bounded() {
        let mut log = ChatLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit("v", "ann", "  ", t0), Err(Refusal::Empty));
        let long = "é".repeat(MAX_TEXT + 1);
        assert_eq!(log.admit("v", "ann", &long, t0), Err(Refusal::TooLong));
        for _ in 0..3 {
            assert_eq!(log.admit("v", "ann", "q", t0), Ok(()));
        }
        assert_eq!(log.admit("v", "ann", "q", t0), Err(Refusal::TooFast(2)));
        // Another viewer has their own budget; the first gets one back after REFILL_MS.
        assert_eq!(log.admit("w", "bob", "q", t0), Ok(()));
        let later = t0 + Duration::from_millis(REFILL_MS as u64);
        assert_eq!(log.admit("v", "ann", "q", later), Ok(()));
        log.append(EventKind::Mute { name: "ann".into() }, 5);
        assert_eq!(log.admit("v2", "ann", "q", later), Err(Refusal::Muted));
    }

    #[test]
    fn the_log_and_the_rate_table_are_bounded() {
        let mut log = ChatLog::default();
        for i in 0..(MAX_EVENTS as u64 + 10) {
            log.append(msg("ann", false), i);
        }
        assert_eq!(log.since(0).len(), MAX_EVENTS);
        assert_eq!(log.since(0)[0].id, 11);
        let t0 = Instant::now();
        for i in 0..(MAX_RATE_ENTRIES + 5) {
            let _ = log.admit(&format!("v{i}"), "x", "q", t0);
        }
        assert!(log.rates.len() <= MAX_RATE_ENTRIES);
    }

    #[test]
    fn a_replay_shows_answers_and_chat_but_no_q_and_a_question_and_nothing_hidden() {
        let mut log = ChatLog::default();
        log.append(msg("ann", false), 1); // 1: Q&A, to the teacher only
        log.append(msg("teacher", true), 2); // 2
        log.append(EventKind::Mode { chat: true }, 3);
        log.append(msg("bob", false), 4); // 4
        log.append(msg("cid", false), 5); // 5, hidden later
        log.append(EventKind::Hide { message: 5 }, 6);
        let events: Vec<Event> = log.since(0).iter().map(|e| (**e).clone()).collect();
        let ids: Vec<u64> = replay(&events).iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![2, 4]);
    }

    #[test]
    fn events_serialise_flat_with_their_type() {
        let mut log = ChatLog::default();
        let e = log.append(EventKind::Hide { message: 7 }, 42);
        let j = serde_json::to_string(&*e).unwrap();
        assert_eq!(j, r#"{"id":1,"at_ms":42,"type":"hide","message":7}"#);
        let back: Event = serde_json::from_str(&j).unwrap();
        assert_eq!(back, *e);
    }
}
