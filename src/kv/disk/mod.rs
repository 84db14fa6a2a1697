//! Disk tier (being written).
