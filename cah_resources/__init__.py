"""Resources and the plain code they drive."""
