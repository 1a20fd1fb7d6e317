/**
 * Where a Controller learns its peers: one interface (`PeerSource`), two implementations:
 * `StaticPeers` (here: the `--peer` list) and `EtcdMembership` (controller/membership.ts,
 * loaded only with `--etcd`: the etcd client pulls in gRPC).
 */

/** What a PeerSource feeds: the Controller (controller.ts addPeer/failPeer). */
export interface PeerSink {
  /** Peer `id` is a member at `addr` (tcp://HOST:PORT) with `epoch` (0: unknown): link to it. */
  addPeer(id: number, addr: string, epoch: number): void;
  /** Peer `id` at `epoch` failed or left (`why` for the log): close its link, revoke its objects, fire 'owner-failed'. */
  failPeer(id: number, epoch: number, why: string): void;
}

export interface PeerSource {
  /**
   * Members known before the Controller starts: given to `Controller.start` as `peers`, so
   * that its host lists them from the first moment (dials the lower ids, awaits the higher
   * ones with warnings). `start` feeds only what is learnt later.
   */
  readonly initial: ReadonlyMap<number, string>;
  /** Feed `sink` from now on; resolves once the current members were given to it. */
  start(sink: PeerSink): Promise<void>;
  /** Stop (an etcd member deregisters: its lease is revoked, the others fail it at once). */
  close(): Promise<void>;
}

/** The static `--peer` list: all of it is `initial`; nothing joins or fails later. */
export class StaticPeers implements PeerSource {
  constructor(readonly initial: ReadonlyMap<number, string>) {}
  async start(_sink: PeerSink): Promise<void> {
    // every member was listed at the Controller's start (`initial`)
  }
  async close(): Promise<void> {}
}

/** Default etcd key prefix of a cluster (members, allowed ids, names). */
export const DEFAULT_ETCD_PREFIX = '/fractos';
