"""The demo station: a simulated fixture, a loopback broker and a recorder, end to end."""
