//! Follows `/v1/topology` with blocking queries (to be written: see issue 3).
