"""The worker's HTTP edge: collector, tracker script, call lists and outcomes (docs/http.md)."""
