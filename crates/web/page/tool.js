// The Python tool in a Web Worker, for the page and for the recipe's worker. The interpreter
// checks a call's deadline itself and almost always answers `timeout` on time; a call that
// escapes those checks (code that catches its KeyboardInterrupt and loops on, native work no
// check reaches) would hold its thread for good, so past the deadline and a grace the worker is
// ended, the call answered `timeout`, and a fresh worker serves the next call. A worker that
// dies in a call (a trap in the module) is replaced the same way, the call answered `crashed`.

// Past the deadline, how long the interpreter has to answer by itself.
const GRACE_MS = 2000;

const result = (status, stderr, elapsedMs) => JSON.stringify({ status, stdout: '', stderr, elapsed_us: Math.round(elapsedMs * 1000) });

export class PythonWorker {
  constructor(timeoutMs, memoryMib) {
    this.timeoutMs = timeoutMs;
    this.memoryMib = memoryMib;
    this.restarts = 0;
    this.next = 0;
    this.spawn();
  }

  spawn() {
    const worker = new Worker(new URL('./python_worker.js', import.meta.url), { type: 'module' });
    this.worker = worker;
    // id -> {answer, timer, started} of the calls in flight.
    this.pending = new Map();
    // Loading and compiling the module is not the call's time: the deadline starts once it is ready.
    this.ready = new Promise((resolve, reject) => {
      worker.onmessage = ({ data }) => {
        if (data.ready) resolve();
        else if (data.failed) reject(new Error(`the Python worker failed to start: ${data.failed}`));
        else this.settle(data.id, data.result);
      };
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(`the Python worker failed: ${e.message}`));
        if (this.worker === worker && this.pending.size > 0) this.restart('crashed', `the Python worker died in this call (${e.message}) and was replaced`);
      };
    });
    this.ready.catch(() => {});
    worker.postMessage({ timeoutMs: this.timeoutMs, memoryMib: this.memoryMib });
  }

  // Runs a call given as JSON ({"code": ...}); resolves to the result as JSON.
  async call(callJson) {
    await this.ready;
    const id = ++this.next;
    return new Promise((answer) => {
      const timer = setTimeout(
        () => this.restart('timeout', `the call ran past its ${this.timeoutMs} ms deadline and did not stop: its worker was ended and replaced`),
        this.timeoutMs + GRACE_MS,
      );
      this.pending.set(id, { answer, timer, started: performance.now() });
      this.worker.postMessage({ id, call: callJson });
    });
  }

  settle(id, json) {
    const call = this.pending.get(id);
    if (!call) return;
    this.pending.delete(id);
    clearTimeout(call.timer);
    call.answer(json);
  }

  // Ends the worker (and whatever it was running) and starts a fresh one; the calls in flight
  // answer `status` with `why`.
  restart(status, why) {
    this.worker.terminate();
    this.restarts += 1;
    const calls = [...this.pending.values()];
    this.spawn();
    for (const call of calls) {
      clearTimeout(call.timer);
      call.answer(result(status, why, performance.now() - call.started));
    }
  }

  // Ends the worker for good.
  close() {
    this.worker.terminate();
  }
}
