"""Files in and out: video (decord/PyAV in, ffmpeg out), safetensors shards, captions."""
