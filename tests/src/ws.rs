//! WebSocket clients for the messaging tests.
