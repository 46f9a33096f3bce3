//! gRPC health checking: SERVING for the whole server and for
//! points.v1.PointsService, NOT_FOUND for anything else.

use crate::common::TestServer;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Health reports SERVING for the whole server and for points.v1.PointsService.
#[tokio::test]
async fn health_reports_serving_for_server_and_points_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "points.v1.PointsService"] {
        let reply = health
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest { service: "no.such.Service".to_owned() })
        .await
        .expect_err("unknown services are NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}
