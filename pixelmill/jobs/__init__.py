"""Running generations for the API: the service every dialect calls, and result storage."""
