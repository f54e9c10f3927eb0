//! DP-SGD.
