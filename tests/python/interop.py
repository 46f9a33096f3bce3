"""Interop checks for a Python client generated from proto/ with grpcio-tools.

Run by tests/it/python_interop.rs against the real server:
    python interop.py HOST:PORT
(with the generated modules on PYTHONPATH). Exits non-zero on the first
failed check.
"""

import sys

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from points.v1 import points_pb2, points_pb2_grpc

EXAMPLE_A = [
    ("DANNON", 300, "2022-10-31T10:00:00Z"),
    ("UNILEVER", 200, "2022-10-31T11:00:00Z"),
    ("DANNON", -200, "2022-10-31T15:00:00Z"),
    ("MILLER COORS", 10000, "2022-11-01T14:00:00Z"),
    ("DANNON", 1000, "2022-11-02T14:00:00Z"),
]
# Example B: example A's transactions, two years earlier, arriving in another order.
EXAMPLE_B = [
    (payer, points, when.replace("2022-", "2020-", 1))
    for payer, points, when in (EXAMPLE_A[index] for index in (4, 1, 2, 3, 0))
]
EXPECTED_SPEND = [("DANNON", -100), ("UNILEVER", -200), ("MILLER COORS", -4700)]
EXPECTED_BALANCES = {"DANNON": 1000, "UNILEVER": 0, "MILLER COORS": 5300}


def timestamp(text):
    value = Timestamp()
    value.FromJsonString(text)
    return value


def details(error):
    """The ErrorInfo and BadRequest carried by a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries google.rpc.Status details"
    info, bad_request = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def refusal(call, request, code):
    """The ErrorInfo and BadRequest of a call that must be refused with `code`."""
    try:
        call(request)
    except grpc.RpcError as error:
        assert error.code() == code, error.code()
        return details(error)
    raise AssertionError(f"accepted: {request}")


def run_example(stub, user, transactions):
    for payer, points, when in transactions:
        stub.AddTransaction(
            points_pb2.AddTransactionRequest(user_id=user, payer=payer, points=points, timestamp=timestamp(when))
        )
    reply = stub.Spend(points_pb2.SpendRequest(user_id=user, points=5000))
    spent = [(entry.payer, entry.points) for entry in reply.spent]
    assert spent == EXPECTED_SPEND, f"{user}: spent {spent}"
    balances = dict(stub.GetBalances(points_pb2.GetBalancesRequest(user_id=user)).balances)
    assert balances == EXPECTED_BALANCES, f"{user}: balances {balances}"


def main(address):
    channel = grpc.insecure_channel(address)
    stub = points_pb2_grpc.PointsServiceStub(channel)

    run_example(stub, "python-example-a", EXAMPLE_A)
    run_example(stub, "python-example-b", EXAMPLE_B)

    overdraft = points_pb2.SpendRequest(user_id="python-example-a", points=1_000_000)
    info, _ = refusal(stub.Spend, overdraft, grpc.StatusCode.FAILED_PRECONDITION)
    assert info.reason == "INSUFFICIENT_POINTS", info
    assert info.domain == "points.v1.PointsService", info
    assert info.metadata["requested"] == "1000000" and info.metadata["available"] == "6300", info

    invalid = points_pb2.AddTransactionRequest(payer=" ", points=0)
    info, bad_request = refusal(stub.AddTransaction, invalid, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "PAYER_BLANK", info
    fields = [violation.field for violation in bad_request.field_violations]
    assert fields == ["payer", "points", "timestamp"], fields

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "points.v1.PointsService"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, reply)

    checkout = points_pb2.SpendRequest(user_id="python-example-a", points=10, request_id="python-checkout-1")
    first = stub.Spend(checkout)
    retried = stub.Spend(checkout)
    assert first == retried, (first, retried)
    total = sum(stub.GetBalances(points_pb2.GetBalancesRequest(user_id="python-example-a")).balances.values())
    assert total == 6300 - 10, f"the retry spent again: {total}"

    print("python interop: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
