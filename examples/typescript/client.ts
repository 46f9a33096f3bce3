/**
 * A TypeScript client for points.v1.PointsService, generated from the
 * .proto with protoc-gen-es and speaking gRPC (HTTP/2) through Connect for
 * Node. It runs the README's examples against a server and checks every
 * reply, so it doubles as an interop test (`cargo test` runs it):
 *
 *     cargo run --release -- --in-memory &      # from the repository root
 *     cd examples/typescript
 *     npm ci && npm run generate                # code into gen/ from proto/
 *     npm start -- localhost:50051
 *
 * Each run uses users of its own, so it can run again on the same server.
 * It prints what it sees, ends with "typescript interop: all checks passed",
 * and exits non-zero on the first failed check.
 */

import { randomUUID } from "node:crypto";

import { equals } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import {
  PointsService,
  SpendResponseSchema,
  type PayerPoints,
} from "./gen/points/v1/points_pb.js";

/** A client of the points service. */
type Points = Client<typeof PointsService>;

/** A transaction to record: payer, points, and when they were earned. */
type NewTransaction = [payer: string, points: bigint, timestamp: string];

/** The README's example: five transactions, then a spend of 5000. */
const EXAMPLE_A: NewTransaction[] = [
  ["DANNON", 300n, "2022-10-31T10:00:00Z"],
  ["UNILEVER", 200n, "2022-10-31T11:00:00Z"],
  ["DANNON", -200n, "2022-10-31T15:00:00Z"],
  ["MILLER COORS", 10000n, "2022-11-01T14:00:00Z"],
  ["DANNON", 1000n, "2022-11-02T14:00:00Z"],
];

/**
 * Example B: example A's transactions, two years earlier, arriving in
 * another order. The same points are oldest, so the spend and the balances
 * are the same.
 */
const EXAMPLE_B: NewTransaction[] = [4, 1, 2, 3, 0].map((index) => {
  const [payer, points, timestamp] = EXAMPLE_A[index];
  return [payer, points, timestamp.replace("2022-", "2020-")];
});

/** What spending 5000 gives, per the README, for either example. */
const EXPECTED_SPEND = "DANNON -100, UNILEVER -200, MILLER COORS -4700";
/** The balances after that spend, per the README, sorted by payer. */
const EXPECTED_BALANCES = "DANNON 1000, MILLER COORS 5300, UNILEVER 0";

/** Stops the run with `message` unless `condition` holds. */
function check(condition: boolean, message: string): asserts condition {
  if (!condition) {
    throw new Error(`check failed: ${message}`);
  }
}

/** "DANNON -100, UNILEVER -200": payers and points in the reply's order. */
function showPayers(payers: PayerPoints[]): string {
  return payers.map(({ payer, points }) => `${payer} ${points}`).join(", ");
}

/** "DANNON 1000, UNILEVER 0": a balances map, sorted by payer. */
function showBalances(balances: Record<string, bigint>): string {
  return Object.keys(balances)
    .sort()
    .map((payer) => `${payer} ${balances[payer]}`)
    .join(", ");
}

/** The gRPC name of a status code: Code.FailedPrecondition is FAILED_PRECONDITION. */
function codeName(code: Code): string {
  return Code[code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
}

/**
 * Runs `call`, which the server must refuse with `code`, and returns the
 * refusal. Its details (a google.rpc.Status in the grpc-status-details-bin
 * trailer) are decoded by ConnectError.findDetails.
 */
async function refusal(call: () => Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await call();
  } catch (thrown) {
    const error = ConnectError.from(thrown);
    check(error.code === code, `refused with ${codeName(error.code)}, not ${codeName(code)}: ${error.message}`);
    check(error.metadata.has("grpc-status-details-bin"), "the refusal carries grpc-status-details-bin");
    return error;
  }
  throw new Error(`check failed: accepted a call that must be refused with ${codeName(code)}`);
}

/** Records `transactions` for `userId`, spends 5000, and checks the outcome against the README. */
async function runExample(points: Points, name: string, userId: string, transactions: NewTransaction[]) {
  for (const [index, [payer, amount, timestamp]] of transactions.entries()) {
    const { transaction } = await points.addTransaction({
      userId,
      payer,
      points: amount,
      timestamp: timestampFromDate(new Date(timestamp)),
    });
    // Transaction ids are assigned in arrival order, from 1.
    check(transaction?.id === BigInt(index + 1), `${name}: transaction ${index + 1} got id ${transaction?.id}`);
  }
  const spend = await points.spend({ userId, points: 5000n });
  const spent = showPayers(spend.spent);
  check(spent === EXPECTED_SPEND, `${name}: spent ${spent}`);
  check(spend.spendId === 1n, `${name}: spend id ${spend.spendId}`);
  const { balances, position } = await points.getBalances({ userId });
  check(showBalances(balances) === EXPECTED_BALANCES, `${name}: balances ${showBalances(balances)}`);
  check(position === BigInt(transactions.length + 1), `${name}: balances as of position ${position}`);
  console.log(`${name}: spent ${spent} (spend ${spend.spendId}); balances ${showBalances(balances)}`);
}

/** Refused calls carry a google.rpc.ErrorInfo, and for INVALID_ARGUMENT a BadRequest. */
async function checkRefusals(points: Points, userId: string) {
  const overdraft = await refusal(
    () => points.spend({ userId, points: 1_000_000n }),
    Code.FailedPrecondition,
  );
  const [info] = overdraft.findDetails(ErrorInfoSchema);
  check(info !== undefined, "the refused spend carries an ErrorInfo");
  check(info.reason === "INSUFFICIENT_POINTS", `reason ${info.reason}`);
  check(info.domain === "points.v1.PointsService", `domain ${info.domain}`);
  const { requested, available } = info.metadata;
  check(requested === "1000000" && available === "6300", `requested ${requested}, available ${available}`);
  console.log(
    `refused: ${codeName(overdraft.code)} ${info.reason} from ${info.domain} (requested ${requested}, available ${available})`,
  );

  const invalid = await refusal(
    () => points.addTransaction({ userId, payer: " ", points: 0n }),
    Code.InvalidArgument,
  );
  const [invalidInfo] = invalid.findDetails(ErrorInfoSchema);
  const [badRequest] = invalid.findDetails(BadRequestSchema);
  check(invalidInfo?.reason === "PAYER_BLANK", `reason ${invalidInfo?.reason}`);
  const fields = badRequest?.fieldViolations.map((violation) => violation.field).join(", ");
  check(fields === "payer, points, timestamp", `bad fields ${fields}`);
  console.log(`refused: ${codeName(invalid.code)} ${invalidInfo.reason}; bad fields ${fields}`);
}

/** A spend retried with the same request_id returns the first reply and is applied once. */
async function checkRetriedSpend(points: Points, userId: string) {
  const before = await points.getBalances({ userId });
  const checkout = { userId, points: 10n, requestId: `checkout-${randomUUID()}` };
  const first = await points.spend(checkout);
  const retried = await points.spend(checkout);
  check(equals(SpendResponseSchema, first, retried), `the retry replied ${showPayers(retried.spent)}`);
  const total = (balances: Record<string, bigint>) => Object.values(balances).reduce((sum, n) => sum + n, 0n);
  const left = total((await points.getBalances({ userId })).balances);
  check(left === total(before.balances) - 10n, `the retry spent again: ${left} points left`);
  console.log(`retried spend: same reply (spend ${retried.spendId}: ${showPayers(retried.spent)}); ${left} points left`);
}

/** The server and the points service report SERVING on grpc.health.v1. */
async function checkHealth(health: Client<typeof Health>) {
  for (const service of ["", "points.v1.PointsService"]) {
    const { status } = await health.check({ service });
    check(status === HealthCheckResponse_ServingStatus.SERVING, `health of "${service}": ${status}`);
  }
  console.log("health: SERVING");
}

/**
 * The options of a WatchTransactions call: no deadline, since a follower
 * stays connected until it is done (`stop`); this run also gives up after
 * 10 s, so that entries that never come fail it rather than hang it.
 */
function following(stop: AbortController) {
  return { timeoutMs: 0, signal: AbortSignal.any([stop.signal, AbortSignal.timeout(10_000)]) };
}

/**
 * Follows the user's history from the start, then resumes after the last
 * position seen and receives only what came later: a service that sends
 * notices keeps that position and reconnects with it to miss nothing and see
 * nothing twice.
 */
async function followHistory(points: Points, userId: string) {
  // Every entry so far; the balances tell the position of the last one.
  const { position: end } = await points.getBalances({ userId });
  let lastSeen = 0n;
  const stop = new AbortController();
  for await (const { entry } of points.watchTransactions({ userId, afterPosition: 0n }, following(stop))) {
    check(entry?.position === lastSeen + 1n, `entry at ${entry?.position} after ${lastSeen}`);
    lastSeen = entry.position;
    console.log(`entry ${entry.position} ${entry.entry.case}`);
    if (lastSeen === end) {
      break;
    }
  }
  stop.abort();
  check(lastSeen === end, `the stream ended at ${lastSeen}, before ${end}`);

  // Later (or after the server went away with UNAVAILABLE): resume. The
  // stream stays open and sends a new entry once it is durable.
  const stopResumed = new AbortController();
  const resumed = points
    .watchTransactions({ userId, afterPosition: lastSeen }, following(stopResumed))
    [Symbol.asyncIterator]();
  const next = resumed.next();
  const { transaction } = await points.addTransaction({
    userId,
    payer: "DANNON",
    points: 50n,
    timestamp: timestampFromDate(new Date()),
  });
  const { value, done } = await next;
  stopResumed.abort();
  const entry = done ? undefined : value.entry;
  check(entry?.position === lastSeen + 1n, `resumed at ${entry?.position}, after ${lastSeen}`);
  check(
    entry.entry.case === "transaction" && entry.entry.value.id === transaction?.id,
    `resumed with a ${entry.entry.case}, not transaction ${transaction?.id}`,
  );
  console.log(`resumed after ${lastSeen}: entry ${entry.position} ${entry.entry.case} ${entry.entry.value.id}`);

  // The balances as they were right after the first entry: example A's
  // first transaction alone.
  const then = await points.getBalances({ userId, asOfPosition: 1n });
  const [[firstPayer, firstPoints]] = EXAMPLE_A;
  check(
    showBalances(then.balances) === `${firstPayer} ${firstPoints}`,
    `balances as of 1: ${showBalances(then.balances)}`,
  );
  console.log(`balances as of ${then.position}: ${showBalances(then.balances)}`);
}

async function main(address: string) {
  const baseUrl = `http://${address}`;
  // One HTTP/2 connection for both services, closed at the end.
  const connection = new Http2SessionManager(baseUrl);
  // Plaintext gRPC; no single call of this run should take anywhere near
  // 10 s (WatchTransactions sets its own; see following()).
  const transport = createGrpcTransport({ baseUrl, sessionManager: connection, defaultTimeoutMs: 10_000 });
  const points = createClient(PointsService, transport);
  const run = randomUUID();
  try {
    const exampleA = `example-a-${run}`;
    await runExample(points, "example A", exampleA, EXAMPLE_A);
    await runExample(points, "example B", `example-b-${run}`, EXAMPLE_B);
    await checkRefusals(points, exampleA);
    await checkRetriedSpend(points, exampleA);
    await checkHealth(createClient(Health, transport));
    await followHistory(points, exampleA);
  } finally {
    connection.abort();
  }
  console.log("typescript interop: all checks passed");
}

main(process.argv[2] ?? "localhost:50051").catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
