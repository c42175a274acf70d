// Layers that arrive while the model runs (docs/protocol.md, `overview_layer`): each layer's
// thumbnails leave the server as soon as the model has finished that layer, so the page can
// show the model view filling in during a long forward pass. The `overview` that follows then
// carries no thumbnails (`streamed: true`); they are assembled here from the layers.

/** The thumbnails of layers received so far as an overview; missing layers are blank. */
function partialOverview(layers) {
  const first = layers.find(Boolean);
  const { layers: count, heads, side } = first;
  const size = heads * side * side;
  const data = new Uint8Array(count * size);
  layers.forEach((layer, index) => layer && data.set(layer.thumbnails.data, index * size));
  return { layers: count, heads, side,
    thumbnails: { dtype: "uint8", shape: [count, heads, side, side], data, scale: first.thumbnails.scale } };
}

/** The overview with its thumbnails: as sent, or assembled from the streamed layers. */
export function assembledOverview(overview, layers = []) {
  if (!overview.streamed) return overview;
  if (layers.filter(Boolean).length !== overview.layers) {
    throw new Error(`the overview came without thumbnails, and only ${layers.filter(Boolean).length} of ${overview.layers} layers did`);
  }
  return { ...overview, thumbnails: partialOverview(layers).thumbnails };
}
