// detbatch report: draws each gallery image's boxes as SVG from the embedded data, filtered by the score
// slider, the category toggles and (with ground truth) the ground-truth toggle. No network, no libraries.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const slider = document.getElementById("score");
  const sliderValue = document.getElementById("score-value");
  const showTruth = document.getElementById("show-gt");
  const enabled = new Set(data.categories);
  const SVG = "http://www.w3.org/2000/svg";
  const byId = new Map(data.images.map((im) => [String(im.id), im]));

  function box(svg, b, cls, title) {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", b[0]);
    r.setAttribute("y", b[1]);
    r.setAttribute("width", Math.max(b[2] - b[0], 0));
    r.setAttribute("height", Math.max(b[3] - b[1], 0));
    r.setAttribute("class", cls);
    r.setAttribute("vector-effect", "non-scaling-stroke");
    const t = document.createElementNS(SVG, "title");
    t.textContent = title;
    r.appendChild(t);
    svg.appendChild(r);
  }

  function draw(card, threshold) {
    const im = byId.get(card.dataset.imageId);
    const svg = card.querySelector("svg");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    let shown = 0;
    for (const d of im.dets) {  // [x0, y0, x1, y1, score, category index, tp: 1, fp: 0, no truth: -1]
      const cat = data.categories[d[5]];
      if (d[4] < threshold || !enabled.has(cat)) continue;
      const kind = d[6] === 1 ? " tp" : d[6] === 0 ? " fp" : " c" + (d[5] % 8);
      box(svg, d, "det" + kind, cat + " " + d[4].toFixed(3));
      shown += 1;
    }
    let missed = 0;
    for (const g of im.gt || []) {  // [x0, y0, x1, y1, category index, score of the detection that took it or -1]
      const cat = data.categories[g[4]];
      if (!enabled.has(cat)) continue;
      if (g[5] < threshold) {
        box(svg, g, "gt fn", cat + " missed");
        missed += 1;
      } else if (showTruth && showTruth.checked) {
        box(svg, g, "gt found", cat + " (ground truth)");
      }
    }
    card.querySelector(".count").textContent =
      shown + " boxes" + (im.gt ? ", " + missed + " missed" : "");
  }

  function drawAll() {
    const threshold = parseFloat(slider.value);
    sliderValue.textContent = threshold.toFixed(2);
    document.querySelectorAll(".card").forEach((card) => draw(card, threshold));
  }

  slider.addEventListener("input", drawAll);
  if (showTruth) showTruth.addEventListener("change", drawAll);
  document.querySelectorAll("input.category").forEach((input) => {
    input.addEventListener("change", () => {
      if (input.checked) enabled.add(input.value);
      else enabled.delete(input.value);
      drawAll();
    });
  });
  drawAll();
})();
