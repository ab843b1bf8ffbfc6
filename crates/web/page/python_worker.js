// A Web Worker holding one Python interpreter (rstar2_web.PythonTool): it answers
// {id, call} with {id, result}, both JSON as the sandbox's HTTP service speaks it. The first
// message sets the limits, {timeoutMs, memoryMib}; it answers {ready: true}, or {failed}.
import init, { PythonTool } from './pkg/rstar2_web.js';

let tool = null;
self.onmessage = async ({ data }) => {
  if (data.timeoutMs !== undefined) {
    try {
      await init();
      tool = new PythonTool(data.timeoutMs, data.memoryMib);
      self.postMessage({ ready: true });
    } catch (e) {
      self.postMessage({ failed: String(e) });
    }
    return;
  }
  // A trap in the module (a refused allocation where Rust cannot fail) throws here, which the
  // page sees as the worker's error event.
  self.postMessage({ id: data.id, result: tool.run(data.call) });
};
