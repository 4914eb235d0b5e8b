"""vosd streaming side: sources, transport, job queue, writer, daemon and command line."""
