//! Types and service stubs generated from `proto/points/v1/points.proto`, and
//! the encoded descriptors that server reflection serves.

/// The `points.v1` package: messages, client and server.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    missing_docs
)]
pub mod v1 {
    tonic::include_proto!("points.v1");
}

/// The encoded `FileDescriptorSet` of proto/, written by build.rs, so that
/// grpcurl and other reflection clients can describe the API with no .proto
/// at hand.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("points_descriptor");
