"""A job's results on disk: the files (`writer`: overlay MP4, palette PNGs, RLE JSON, atomic rename), the
writer process that makes them (`writer_process`), the live preview JPEG (`preview`), and the checkpoints
kept next to them so a re-run resumes (`resume`)."""
