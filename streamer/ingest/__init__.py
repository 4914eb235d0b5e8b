"""Reading video: sources (files, network streams, cameras) with reconnect and give-up (`sources`), and the
decoder process of one job that sends their frames to a worker and the writer (`decoder`)."""
