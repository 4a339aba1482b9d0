// pixelmill web UI: the input image of img2img, and the inpainting mask painted over it.
//
// The mask is kept on its own canvas at the image's own pixel size (white strokes on
// transparency; the eraser removes strokes) and shown half-transparent over the image.
// It is sent as the native API's mask: white = repaint on black. Outpainting is an
// inpaint of a larger canvas: the image centred, the new border masked (white), so the
// server needs nothing special for it.
"use strict";

export class MaskEditor {
  /** `canvas`: where the image and mask are shown and painted. */
  constructor(canvas) {
    this.canvas = canvas;
    this.image = null;  // an HTMLImageElement once a file is loaded
    this.mask = document.createElement("canvas");
    this.tool = "brush";
    this.size = 24;
    this.enabled = false;
    this.painting = false;
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(name, () => { this.painting = false; this.last = null; });
    }
  }

  /** Load an image file (PNG/JPEG/WebP); resolves once it is shown. */
  async load(file) {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.src = url;
    await image.decode();
    this.image = image;
    for (const c of [this.canvas, this.mask]) {
      c.width = image.naturalWidth;
      c.height = image.naturalHeight;
    }
    this.redraw();
  }

  clear() {
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
    this.redraw();
  }

  /** Whether any mask pixel is painted. */
  painted() {
    if (!this.image) return false;
    const data = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
  }

  redraw() {
    if (!this.image) return;
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.image, 0, 0);
    ctx.globalAlpha = 0.55;
    ctx.drawImage(this.mask, 0, 0);
    ctx.globalAlpha = 1;
  }

  /** Paint a stroke from (x0, y0) to (x1, y1) in image pixels (also used by tests and keyboard users' scripts). */
  stroke(x0, y0, x1, y1) {
    const ctx = this.mask.getContext("2d");
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = this.size;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
    ctx.globalCompositeOperation = "source-over";
    this.redraw();
  }

  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * this.canvas.width / box.width,
            (event.clientY - box.top) * this.canvas.height / box.height];
  }

  #down(event) {
    if (!this.enabled || !this.image) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.painting = true;
    this.last = this.#point(event);
    this.stroke(...this.last, ...this.last);
  }

  #move(event) {
    if (!this.painting) return;
    const point = this.#point(event);
    this.stroke(...this.last, ...point);
    this.last = point;
  }

  /**
   * The request's images as data URLs: {image, mask|null, width, height}. `pad` pixels are
   * added on every side for outpainting (border masked white, image centred, the border
   * pre-filled with the image's edge colours stretched so the model starts from them).
   */
  export(pad = 0) {
    const w = this.image.naturalWidth, h = this.image.naturalHeight;
    const out = document.createElement("canvas");
    out.width = w + 2 * pad;
    out.height = h + 2 * pad;
    const ctx = out.getContext("2d");
    if (pad > 0) ctx.drawImage(this.image, 0, 0, out.width, out.height);  // a blurred-looking start for the border
    ctx.drawImage(this.image, pad, pad);
    const useMask = pad > 0 || (this.enabled && this.painted());
    if (!useMask) return { image: out.toDataURL("image/png"), mask: null, width: out.width, height: out.height };
    const mask = document.createElement("canvas");
    mask.width = out.width;
    mask.height = out.height;
    const m = mask.getContext("2d");
    m.fillStyle = "#fff";
    m.fillRect(0, 0, mask.width, mask.height);
    m.fillStyle = "#000";
    m.fillRect(pad, pad, w, h);
    if (this.enabled) m.drawImage(this.mask, pad, pad);
    return { image: out.toDataURL("image/png"), mask: mask.toDataURL("image/png"), width: out.width, height: out.height };
  }
}
