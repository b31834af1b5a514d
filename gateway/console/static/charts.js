// Small inline SVG charts of a series: one bar per interval, drawn from numbers only.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 240;
const HEIGHT = 48;

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function format(value, unit) {
  if (value === null || value === undefined) return "–";
  const digits = value >= 100 || Number.isInteger(value) ? 0 : 1;
  return `${value.toFixed(digits)}${unit}`;
}

// A figure: a title, the latest and the peak value, and a bar chart of `values`, oldest first
// (nulls are gaps). `name` labels it for tests and styles (data-chart).
export function barChart(name, title, values, unit, intervalS) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.chart = name;
  const numbers = values.filter((v) => v !== null && v !== undefined);
  const peak = numbers.length ? Math.max(...numbers) : 0;
  // The last interval is still running: "latest" is the one before it.
  const done = values.slice(0, -1).reverse();
  const latest = done.find((v) => v !== null && v !== undefined) ?? null;
  const minutes = Math.round((values.length * intervalS) / 60);
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${title} over the last ${minutes} minutes: latest ${format(latest, unit)}, peak ${format(peak, unit)}`,
  });
  chart.append(svg("line", { x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, class: "axis" }));
  const step = WIDTH / Math.max(1, values.length);
  values.forEach((value, i) => {
    if (value === null || value === undefined || value <= 0 || peak <= 0) return;
    const height = Math.max(1, (value / peak) * (HEIGHT - 2));
    chart.append(
      svg("rect", {
        x: (i * step).toFixed(2),
        y: (HEIGHT - height).toFixed(2),
        width: Math.max(0.5, step - 0.5).toFixed(2),
        height: height.toFixed(2),
        class: "bar",
      }),
    );
  });
  const caption = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "chart-title";
  label.textContent = title;
  const value = document.createElement("span");
  value.className = "chart-value";
  value.textContent = `${format(latest, unit)} (peak ${format(peak, unit)})`;
  caption.append(label, " ", value);
  figure.append(caption, chart);
  return figure;
}
