//! A webhook receiver for the delivery tests: a real HTTP server that records requests and answers as told.
