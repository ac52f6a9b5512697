//! Every process the bench starts goes through the [`Supervisor`]: it knows each one's PID, stops
//! it by PID (SIGTERM, then SIGKILL after 5 s) and, when dropped (normal end, error, panic,
//! interrupt), stops whatever is still running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Set by the signal handler; long waits poll it so that an interrupt ends them promptly.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs SIGINT/SIGTERM/SIGHUP handlers that only raise a flag: the orchestration notices it
/// at its next poll and unwinds, and the supervisor's drop stops the children in order. Every
/// child runs in its own process group, so a Ctrl-C in the terminal reaches this process only,
/// never a server in the middle of a measurement.
pub fn install_signal_handlers() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let mut s = signal(kind)?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    eprintln!("[bench] interrupted: stopping every process the bench started");
                }
            }
        });
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, ending early with an error on an interrupt.
pub async fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// How every child is started: the real-time wrapper (empty or `chrt -r 1`) and the environment
/// the servers share.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub rt: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// `program args…`, under the real-time wrapper when `rt` and the wrapper is on.
    pub fn command(&self, rt: bool, program: &Path, args: &[String]) -> Command {
        let mut cmd = if rt && !self.rt.is_empty() {
            let mut c = Command::new(&self.rt[0]);
            c.args(&self.rt[1..]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

struct Entry {
    name: String,
    child: Child,
}

#[derive(Default)]
pub struct Supervisor {
    children: Mutex<Vec<Entry>>,
}

/// Where a child's stdout and stderr go.
pub enum Output {
    /// Both to this file (created or truncated).
    Log(PathBuf),
    /// The bench's own (load generators print their summary and result line there).
    Inherit,
}

impl Supervisor {
    /// Starts `cmd` in its own process group and remembers it. Returns its PID (with the
    /// `chrt` wrapper it is the program's: chrt execs it).
    pub fn spawn(&self, name: &str, mut cmd: Command, out: Output) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        check_interrupted()?;
        cmd.stdin(Stdio::null()).process_group(0);
        if let Output::Log(path) = &out {
            let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id();
        self.children.lock().unwrap().push(Entry {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Whether the child `pid` still runs (an exited one is reaped here, and stays known until
    /// [`Supervisor::stop`] forgets it).
    pub fn alive(&self, pid: u32) -> bool {
        let mut list = self.children.lock().unwrap();
        list.iter_mut()
            .find(|e| e.child.id() == pid)
            .is_some_and(|e| matches!(e.child.try_wait(), Ok(None)))
    }

    /// Waits for the child `pid` to exit by itself (a load generator, an encoder) and forgets it.
    /// An interrupt ends the wait with an error; the child is then stopped with the others.
    pub async fn wait(&self, pid: u32) -> anyhow::Result<ExitStatus> {
        loop {
            check_interrupted()?;
            {
                let mut list = self.children.lock().unwrap();
                let i = list
                    .iter()
                    .position(|e| e.child.id() == pid)
                    .context("waiting for a process the bench did not start")?;
                if let Some(st) = list[i].child.try_wait()? {
                    let e = list.remove(i);
                    // Its group may hold children it left behind (ffmpeg under node).
                    drop(list);
                    let mut e = e;
                    stop_entry(&mut e);
                    return Ok(st);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `cmd` to its end (supervised meanwhile) and fails unless it exits 0.
    pub async fn run(&self, name: &str, cmd: Command, out: Output) -> anyhow::Result<()> {
        let pid = self.spawn(name, cmd, out)?;
        let st = self.wait(pid).await?;
        if !st.success() {
            bail!("{name} failed ({st})");
        }
        Ok(())
    }

    /// Stops one child (SIGTERM to its group, SIGKILL after 5 s), reaps it and forgets it, so
    /// that a recycled PID is never signalled later.
    pub fn stop(&self, pid: u32) {
        let e = {
            let mut list = self.children.lock().unwrap();
            list.iter()
                .position(|e| e.child.id() == pid)
                .map(|i| list.remove(i))
        };
        if let Some(mut e) = e {
            stop_entry(&mut e);
        }
    }

    /// Stops every child still running, the newest first (peers before the servers they talk
    /// to, slaves before their master).
    pub fn stop_all(&self) {
        let mut list =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        while let Some(mut e) = list.pop() {
            stop_entry(&mut e);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn group_exists(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: the group is one this process created and still holds (its leader is not reaped,
    // or members remain), so the id cannot have been recycled.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn stop_entry(e: &mut Entry) {
    let pgid = e.child.id() as i32;
    let leader_done = matches!(e.child.try_wait(), Ok(Some(_)));
    if leader_done && !group_exists(pgid) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reaped = leader_done;
    while Instant::now() < deadline {
        if !reaped {
            reaped = matches!(e.child.try_wait(), Ok(Some(_)));
        }
        if reaped && !group_exists(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "[bench] {} (pid {pgid}) ignored SIGTERM for 5 s: SIGKILL",
        e.name
    );
    signal_group(pgid, libc::SIGKILL);
    let _ = e.child.wait();
    // Members of the group are children of the leader (or of init by now): give them a moment.
    for _ in 0..20 {
        if !group_exists(pgid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
