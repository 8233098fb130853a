// Frontend extension of the HunyuanVideo node pack.
//  - shows the rewritten prompt on the prompt-rewrite node after it runs;
//  - shows a live VRAM estimate on the sampler and block-swap nodes (from the pack's
//    /hunyuanvideo/estimate route, which runs the memory planner);
//  - snaps the sampler's frames widget to the nearest valid 4k+1 value;
//  - loads endpoint nodes saved before keys moved to the server (their api_key_env widget is dropped).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const REWRITE = "HunyuanVideoPromptRewrite";
const ENDPOINT = "HunyuanVideoRewriteEndpoint";
const SAMPLER = "HunyuanVideoSampler";
const BLOCK_SWAP = "HunyuanVideoBlockSwap";
const ESTIMATE_WIDGET = "vram_estimate";

// Rewrite Endpoint nodes saved before issue 22 have five widget values: endpoint_url, model,
// api_key_env, timeout_s, max_retries. Which key an endpoint gets is now the server owner's
// choice (README, Security), so the third value is dropped; the rest keep their meaning.
export function migrateEndpointWidgets(values) {
  if (!Array.isArray(values) || values.length !== 5 || typeof values[2] !== "string") return values;
  console.warn("HunyuanVideo: dropped api_key_env from a Rewrite Endpoint node; keys are configured on the server");
  return [...values.slice(0, 2), ...values.slice(3)];
}

export function snapFrames(value) {
  const n = Math.max(1, Math.round(Number(value) || 1));
  return Math.max(1, 4 * Math.round((n - 1) / 4) + 1);
}

function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name);
}

function readOnlyText(node, name, initial) {
  let w = widget(node, name);
  if (!w) {
    // Typing into it is undone on the next update; it is never saved (serialize: false), so
    // workflows saved with this extension load without it.
    w = node.addWidget("text", name, initial, () => {}, { serialize: false });
    w.serialize = false;
  }
  w.value = initial;
  return w;
}

// The node feeding `inputName` of `node`, if any.
function upstream(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (input?.link == null) return null;
  const link = app.graph.links[input.link] ?? app.graph.links.get?.(input.link);
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

// Nodes fed by `node` (any output).
function downstream(node) {
  const found = [];
  for (const out of node.outputs ?? []) {
    for (const id of out.links ?? []) {
      const link = app.graph.links[id] ?? app.graph.links.get?.(id);
      const target = link && app.graph.getNodeById(link.target_id);
      if (target) found.push(target);
    }
  }
  return found;
}

const LOADER = "HunyuanVideoDiTLoader";
const WEIGHT_DTYPES = { default: "bf16", bf16: "bf16", fp16: "fp16", fp32: "fp32", fp8_e4m3fn: "fp8" };

function estimateParams(node) {
  const sampler = node.comfyClass === SAMPLER ? node : downstream(node).find((n) => n.comfyClass === SAMPLER);
  const swap = node.comfyClass === BLOCK_SWAP ? node : upstream(node, "dit");
  let loader = upstream(node, "dit");
  if (loader?.comfyClass === BLOCK_SWAP) loader = upstream(loader, "dit");
  const params = {};
  const dtype = loader?.comfyClass === LOADER ? WEIGHT_DTYPES[widget(loader, "weight_dtype")?.value] : null;
  if (dtype) params.weight_dtype = dtype;
  for (const [src, names] of [[sampler, ["width", "height", "frames"]], [swap, ["double_blocks", "single_blocks", "prefetch"]]]) {
    if (!src || (src === swap && src.comfyClass !== BLOCK_SWAP)) continue;
    for (const name of names) {
      const w = widget(src, name);
      if (w) params[name] = w.value;
    }
  }
  return params;
}

function formatGiB(bytes) {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

async function refreshEstimate(node) {
  const params = new URLSearchParams(Object.entries(estimateParams(node)).map(([k, v]) => [k, String(v)]));
  const shown = readOnlyText(node, ESTIMATE_WIDGET, "VRAM estimate: ...");
  // Answers can arrive out of order: only the latest request may write the text.
  const token = (node.hyvidEstimateToken = (node.hyvidEstimateToken ?? 0) + 1);
  try {
    const resp = await api.fetchApi(`/hunyuanvideo/estimate?${params}`);
    const body = await resp.json();
    if (token !== node.hyvidEstimateToken) return;
    shown.value = resp.ok
      ? `VRAM estimate (13B, ${body.inputs.weight_dtype}): ${formatGiB(body.peak_bytes)}`
      : `VRAM estimate: ${body.error}`;
  } catch (err) {
    shown.value = `VRAM estimate unavailable: ${err}`;
  }
  node.hyvidEstimate = shown.value;
  node.setDirtyCanvas?.(true, true);
}

function watchWidgets(node, names, onChange) {
  for (const name of names) {
    const w = widget(node, name);
    if (!w) continue;
    const previous = w.callback;
    w.callback = function (value, ...rest) {
      const result = previous?.call(this, value, ...rest);
      onChange(w);
      return result;
    };
  }
}

app.registerExtension({
  name: "hunyuanvideo.pack",

  async nodeCreated(node) {
    if (node.comfyClass === SAMPLER) {
      watchWidgets(node, ["frames"], (w) => {
        const snapped = snapFrames(w.value);
        if (snapped !== w.value) w.value = snapped;
      });
    }
    if (node.comfyClass === SAMPLER || node.comfyClass === BLOCK_SWAP) {
      const update = () => {
        refreshEstimate(node);
        for (const other of [...downstream(node), upstream(node, "dit")]) {
          if (other && (other.comfyClass === SAMPLER || other.comfyClass === BLOCK_SWAP)) refreshEstimate(other);
        }
      };
      watchWidgets(node, ["width", "height", "frames", "double_blocks", "single_blocks", "prefetch"], update);
      const onConnectionsChange = node.onConnectionsChange;
      node.onConnectionsChange = function (...args) {
        onConnectionsChange?.apply(this, args);
        update();
      };
      // A loaded workflow sets widget values after creation, without widget callbacks.
      const onConfigure = node.onConfigure;
      node.onConfigure = function (...args) {
        const result = onConfigure?.apply(this, args);
        setTimeout(update, 0);
        return result;
      };
      setTimeout(update, 0);
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === ENDPOINT) {
      const configure = nodeType.prototype.configure;
      nodeType.prototype.configure = function (info, ...rest) {
        const values = migrateEndpointWidgets(info?.widgets_values);
        return configure.call(this, values === info?.widgets_values ? info : { ...info, widgets_values: values }, ...rest);
      };
    }
    if (nodeData.name !== REWRITE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("") : message?.text;
      if (text != null) {
        readOnlyText(this, "rewritten_prompt", text);
        this.hyvidRewritten = text;
        this.setDirtyCanvas?.(true, true);
      }
    };
  },
});
