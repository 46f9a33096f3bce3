"""A short Python client for points.v1.PointsService.

Generate the client from the .proto, start a server, and run this:

    python -m pip install grpcio grpcio-tools grpcio-status
    python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. proto/points/v1/points.proto
    cargo run --release -- --in-memory &
    python examples/python_client.py localhost:50051
"""

import sys
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from points.v1 import points_pb2, points_pb2_grpc


def main(address):
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    when = Timestamp()
    when.GetCurrentTime()

    # Earn points. A request_id makes a retry after a timeout safe.
    earned = stub.AddTransaction(
        points_pb2.AddTransactionRequest(
            user_id="example-user", payer="DANNON", points=500, timestamp=when, request_id=str(uuid.uuid4())
        )
    )
    print("recorded transaction", earned.transaction.id)

    # Spend some; the reply says which payers gave how much.
    spend = points_pb2.SpendRequest(user_id="example-user", points=200, request_id=str(uuid.uuid4()))
    reply = stub.Spend(spend)
    print("spent", [(entry.payer, entry.points) for entry in reply.spent], "as spend", reply.spend_id)

    # Refusals carry a google.rpc.ErrorInfo with a stable reason.
    try:
        stub.Spend(points_pb2.SpendRequest(user_id="example-user", points=1_000_000))
    except grpc.RpcError as error:
        for detail in rpc_status.from_call(error).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                print("refused:", error.code().name, info.reason, dict(info.metadata))

    balances = stub.GetBalances(points_pb2.GetBalancesRequest(user_id="example-user")).balances
    print("balances", dict(balances))

    # Follow the user's history: every entry so far, then each new one as it
    # is stored. Keep the last position seen; reconnecting with it resumes
    # the stream with nothing missed and nothing twice.
    last_seen = 0
    stream = stub.WatchTransactions(points_pb2.WatchTransactionsRequest(user_id="example-user"))
    for response in stream:
        last_seen = response.entry.position
        print("entry", last_seen, response.entry.WhichOneof("entry"))
        if last_seen == 2:  # the transaction and the spend above
            break
    stream.cancel()

    # Later (or after the server went away with UNAVAILABLE): resume.
    resumed = stub.WatchTransactions(
        points_pb2.WatchTransactionsRequest(user_id="example-user", after_position=last_seen)
    )
    stub.AddTransaction(
        points_pb2.AddTransactionRequest(user_id="example-user", payer="UNILEVER", points=50, timestamp=when)
    )
    print("resumed at", next(resumed).entry.position)
    resumed.cancel()

    # The balances as they were right after the first entry.
    then = stub.GetBalances(points_pb2.GetBalancesRequest(user_id="example-user", as_of_position=1))
    print("balances as of", then.position, dict(then.balances))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051")
