//! Fixtures shared by the integration tests: test images, the local S3
//! server, real FUSE mounts.
#![allow(dead_code)]

pub mod guest;
pub mod http;
pub mod images;
pub mod mount;
pub mod s3;
