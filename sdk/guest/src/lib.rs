//! placeholder, written by the guests helper
