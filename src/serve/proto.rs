//! The generated code of `proto/vstream/v1/vstream.proto` (tonic + prost, by
//! `build.rs`) and its file descriptor set for server reflection.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("vstream.v1");

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vstream_v1_descriptor");

/// The service's full name, as health checks name it.
pub const SERVICE_NAME: &str = "vstream.v1.VideoStreams";
