/**
 * A link to another Controller: its id and epoch, the calls in flight to it.
 */
import { PendingCalls, type ReplyCb } from '../libfractos/calls.js';
import { FractosError } from '../libfractos/errors.js';
import type { Link } from '../libfractos/link.js';

export class PeerConn {
  readonly calls = new PendingCalls();
  alive = true;
  constructor(
    readonly id: number,
    readonly link: Link,
    /** The peer's epoch, proven in the handshake (a newer one replaces this link). */
    readonly epoch: number,
  ) {}

  /** Call the peer with a frame whose payload is sent without copying (Link.sendv). */
  callv(headFor: (seq: number) => Buffer, payload: Uint8Array, cb: ReplyCb): void {
    if (!this.alive) {
      cb(new FractosError('EDISCONNECTED', `controller ${this.id} is not connected`), null);
      return;
    }
    this.link.sendv(headFor(this.calls.add(cb)), payload);
  }

  /** Call the peer; `cb` gets the REPLY frame, or EDISCONNECTED when the link is gone. */
  call(frameFor: (seq: number) => Buffer, cb: ReplyCb): void {
    if (!this.alive) {
      cb(new FractosError('EDISCONNECTED', `controller ${this.id} is not connected`), null);
      return;
    }
    this.link.send(frameFor(this.calls.add(cb)));
  }
}
