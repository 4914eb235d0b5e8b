"""The job queue and its Redis: job records and their states (`jobs`), the server the daemon owns or
reaches (`redis_server`), and the supervisor's view of that server's outages (`redis_link`)."""
