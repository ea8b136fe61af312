"""The toy world (DESIGN §6): a procedural renderer whose ground truth is known, the caption
grammar and its parser, the `semgen toy-data` dataset writer, and a pixel-exact judge that scores
generated videos against a caption.

- `world`: palette, `ClipSpec`, `sample_spec`, `render` / `render_iter`, `caption`, `parse_caption`.
- `dataset`: `write_toy_dataset`, the library side of `semgen toy-data`.
- `judge`: `judge`, `judge_video`, `JudgeResult`.
"""
