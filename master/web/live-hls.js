// How the student page plays a live class with hls.js, in a file of its own so that the
// glass-to-glass bench (bench/web/page.html, `--cfg student`) measures exactly what a student
// gets.
(() => {
  // Low-latency mode (parts, blocking reloads, PART-HOLD-BACK as the target) with catch-up:
  // up to 1.5x speed while behind the target.
  const config = { lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5 };

  // hls.js starts at the keyframe before its target position and speeds up only while more
  // than 1 s is buffered, so a student joining mid-GOP, or one who paused, stayed up to a GOP
  // or more behind PART-HOLD-BACK for the rest of the class (bench section 8: hls.latency
  // p50 1.0-2.0 s against a target of 0.4 s). hls.js jumps to its live sync position when the
  // playhead is more than `liveMaxLatencyDuration` behind the playlist's end; the page sets it
  // at every playlist update to the current target plus two part targets (0.8 s on the
  // defaults), so the jump never fights hls.js's own raised target after a stall.
  function attach(hls) {
    hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
      const d = data.details;
      // Live with parts only: a recording's growing EVENT playlist has none and must stay
      // where the student rewound to.
      if (!d || !d.live || !d.partHoldBack || !d.partTarget) return;
      const target = hls.targetLatency || d.partHoldBack;
      hls.config.liveMaxLatencyDuration = target + 2 * d.partTarget;
    });
  }

  window.ClasscastLiveHls = { config, attach };
})();
