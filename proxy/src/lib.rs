//! rw-proxy (to be written: see issue 2).
