// How the student page plays a live class with hls.js, in a file of its own so that the
// glass-to-glass bench (bench/web/page.html, `--cfg student`) measures exactly what a student
// gets.
(() => {
  // Low-latency mode (parts, blocking reloads, PART-HOLD-BACK as the target) with catch-up:
  // up to 1.5x speed while behind the target. `liveSyncMode: 'buffered'`: the jump to the live
  // sync position (below) lands only in media already buffered. A student behind because the
  // network cannot keep up has nothing buffered there; jumping anyway threw away what was being
  // fetched and restarted at the next keyframe, over and over.
  const config = { lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5, liveSyncMode: 'buffered' };

  // A network that keeps stalling the player: STEADY_STALLS of hls.js's buffer stalls within
  // STEADY_WINDOW_MS (or the page's word, `steady(why)`).
  const STEADY_STALLS = 3, STEADY_WINDOW_MS = 30000;

  // hls.js starts at the keyframe before its target position and speeds up only while more
  // than 1 s is buffered, so a student joining mid-GOP, or one who paused, stayed up to a GOP
  // or more behind PART-HOLD-BACK for the rest of the class (bench section 8: hls.latency
  // p50 1.0-2.0 s against a target of 0.4 s). hls.js jumps to its live sync position when the
  // playhead is more than `liveMaxLatencyDuration` behind the playlist's end; the page sets it
  // at every playlist update to the current target plus two part targets (0.8 s on the
  // defaults), so the jump never fights hls.js's own raised target after a stall.
  //
  // On a network that keeps stalling the player (poor Wi-Fi: 8 % loss in bursts, where one
  // lost packet at the end of a part costs a TCP retransmission timeout), low latency is what
  // the student gives up: the jump and the catch-up both spend the little buffer there is,
  // and each spent buffer is one more stall (the Wi-Fi classroom test: 32 stalls and 33 s of
  // pictures shown in a minute). From the first such sign on, the player plays it as plain
  // HLS: three target durations behind the live edge (HLS's own HOLD-BACK), whole segments,
  // no jump: a retransmission then delays a segment without stopping the picture.
  // `onSteady(why)` hears when.
  function attach(hls, onSteady) {
    let steadyWhy = null;
    let stalls = [];
    // HOLD-BACK's three target durations, once the playlist says what they are.
    const holdBack = (d) => {
      if (d && d.targetduration && (hls.targetLatency || 0) < 3 * d.targetduration) hls.targetLatency = 3 * d.targetduration;
    };
    const steady = (why) => {
      if (steadyWhy) return;
      steadyWhy = why;
      hls.config.liveMaxLatencyDuration = undefined;
      // Whole segments, one playlist reload each, and no catch-up speed: fewer and larger
      // requests, so a lost packet is more often repaired by fast retransmit than by a timeout.
      hls.lowLatencyMode = false;
      holdBack(hls.latestLevelDetails);
      if (onSteady) onSteady(why);
    };
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (data.details !== Hls.ErrorDetails.BUFFER_STALLED_ERROR) return;
      const now = Date.now();
      stalls.push(now);
      stalls = stalls.filter((t) => now - t <= STEADY_WINDOW_MS);
      if (stalls.length >= STEADY_STALLS) steady(stalls.length + ' stalls in ' + Math.round((now - stalls[0]) / 1000) + ' s');
    });
    hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
      const d = data.details;
      // Live with parts only: a recording's growing EVENT playlist has none and must stay
      // where the student rewound to.
      if (!d || !d.live || !d.partHoldBack || !d.partTarget) return;
      if (steadyWhy) {
        holdBack(d);
        return;
      }
      const target = hls.targetLatency || d.partHoldBack;
      hls.config.liveMaxLatencyDuration = target + 2 * d.partTarget;
    });
    return { steady };
  }

  window.ClasscastLiveHls = { config, attach };
})();
