// Names of attention layers. An encoder-decoder record (docs/protocol.md) lists every encoder
// layer, then each decoder block's self-attention and cross-attention, on one token axis of
// source then target tokens; `info.layer_kinds` says which is which. Other models' layers are
// just numbered.

/** The kind of each layer ("encoder", "decoder", "cross"), or null for a one-stack model. */
export function layerKinds(info) {
  return Array.isArray(info?.layer_kinds) ? info.layer_kinds : null;
}

/**
 * "layer 3", or for an encoder-decoder record "encoder 3", "decoder 1 self", "decoder 1 cross";
 * `capital` for the start of a sentence or a tooltip.
 */
export function layerName(info, layer, capital = false) {
  const kinds = layerKinds(info);
  const kind = kinds?.[layer];
  const block = kind ? kinds.slice(0, layer).filter((k) => k === kind).length : layer; // index within its stack
  const name = !kind ? `layer ${layer}` : kind === "encoder" ? `encoder ${block}`
    : `decoder ${block} ${kind === "cross" ? "cross" : "self"}`;
  return capital ? name[0].toUpperCase() + name.slice(1) : name;
}
