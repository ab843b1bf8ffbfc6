// The Python tool in a Web Worker, for the page and for the recipe's worker. The interpreter
// checks a call's deadline itself and almost always answers `timeout` on time; a call that
// escapes those checks (code that catches its KeyboardInterrupt and loops on, native work no
// check reaches) would hold its thread for good, so past the deadline and a grace the worker is
// ended, the call answered `timeout`, and a fresh worker serves the next call.

// Past the deadline, how long the interpreter has to answer by itself.
const GRACE_MS = 2000;

export class PythonWorker {
  constructor(timeoutMs, memoryMib) {
    this.timeoutMs = timeoutMs;
    this.memoryMib = memoryMib;
    this.restarts = 0;
    this.next = 0;
    this.spawn();
  }

  spawn() {
    this.worker = new Worker(new URL('./python_worker.js', import.meta.url), { type: 'module' });
    this.pending = new Map();
    // Loading and compiling the module is not the call's time: the deadline starts once it is ready.
    this.ready = new Promise((resolve, reject) => {
      this.worker.onmessage = ({ data }) => {
        if (data.ready) { resolve(); return; }
        const answer = this.pending.get(data.id);
        this.pending.delete(data.id);
        if (answer) answer(data.result);
      };
      this.worker.onerror = (e) => reject(new Error(`the Python worker failed to start: ${e.message}`));
    });
    this.worker.postMessage({ timeoutMs: this.timeoutMs, memoryMib: this.memoryMib });
  }

  // Runs a call given as JSON ({"code": ...}); resolves to the result as JSON.
  async call(callJson) {
    await this.ready;
    const id = ++this.next;
    const started = performance.now();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.restart();
        resolve(JSON.stringify({
          status: 'timeout', stdout: '',
          stderr: `the call ran past its ${this.timeoutMs} ms deadline and did not stop: its worker was ended and replaced`,
          elapsed_us: Math.round((performance.now() - started) * 1000),
        }));
      }, this.timeoutMs + GRACE_MS);
      this.pending.set(id, (result) => { clearTimeout(timer); resolve(result); });
      this.worker.postMessage({ id, call: callJson });
    });
  }

  // Ends the worker for good.
  close() {
    this.worker.terminate();
  }

  // Ends the worker (and whatever it was running) and starts a fresh one; calls still waiting on
  // the old one answer `crashed`.
  restart() {
    this.worker.terminate();
    this.restarts += 1;
    for (const answer of this.pending.values()) {
      answer(JSON.stringify({ status: 'crashed', stdout: '', stderr: 'the Python worker was ended while this call waited', elapsed_us: 0 }));
    }
    this.spawn();
  }
}
