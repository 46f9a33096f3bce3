//! Server reflection, v1 and v1alpha (all grpcurl 1.8.6 speaks): the
//! services listed, and points.v1, health and the error detail types
//! described.

use crate::common::TestServer;

/// Reflection v1 lists the services and describes points.v1 and the error detail types.
#[tokio::test]
async fn reflection_v1_describes_points_health_and_error_details() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("points.v1.PointsService".into())),
        ask(MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into())),
        ask(MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into())),
        ask(MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
    ];
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection stream")
        .into_inner();
    let mut responses: Vec<ServerReflectionResponse> = Vec::new();
    while let Some(reply) = replies.message().await.expect("reflection reply") {
        responses.push(reply);
    }
    assert_eq!(responses.len(), 5);
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("expected a service list, got {:?}", responses[0]);
    };
    let mut names: Vec<_> = list.service.iter().map(|service| service.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "points.v1.PointsService"]
    );
    for response in &responses[1..] {
        match &response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty())
            }
            other => panic!("expected file descriptors, got {other:?}"),
        }
    }
}

/// Reflection v1alpha (all grpcurl 1.8.6 speaks) describes points.v1 too.
#[tokio::test]
async fn reflection_v1alpha_describes_points_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "points.v1.AddTransactionRequest".into(),
        )),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
        panic!("expected file descriptors, got {reply:?}");
    };
    use prost::Message;
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    assert_eq!(file.package(), "points.v1");
}
