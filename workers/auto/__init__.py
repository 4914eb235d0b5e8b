"""Auto mode: TMO finds the primary object, seeds XMem with it and keeps watching to re-seed (issue #9).

`config` holds only plain types, so `streamer.config` imports it without torch; `session` (AutoSession,
TMOOnlySession), `seed` and `build` are imported where they run."""
