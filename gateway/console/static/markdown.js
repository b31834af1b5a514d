// A small Markdown renderer for model output, which is untrusted text.
//
// It never parses HTML: every piece of text becomes a Text node (textContent), and the only
// elements made are the ones listed here: paragraphs, headings, lists, block quotes, fenced
// code, inline code, bold, italics and http(s) links. A fence still open (a stream under way)
// renders as code up to the end of the text.

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+.#-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=\S)([^*]*?\S)\*|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

// Inline markup of one line or paragraph, as nodes appended to `parent`.
export function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const [, ticks, code, bold, bold2, italic, label, href] = match;
    if (ticks) {
      const node = el("code");
      node.textContent = code;
      parent.append(node);
    } else if (bold !== undefined || bold2 !== undefined) {
      const node = el("strong");
      appendInline(node, bold ?? bold2);
      parent.append(node);
    } else if (italic !== undefined) {
      const node = el("em");
      appendInline(node, italic);
      parent.append(node);
    } else {
      const node = el("a");
      node.href = href; // only http(s), by the pattern: no javascript: or data: URLs
      node.rel = "noopener noreferrer nofollow";
      node.target = "_blank";
      node.textContent = label;
      parent.append(node);
    }
    last = match.index + match[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function paragraph(lines) {
  const node = el("p");
  lines.forEach((line, i) => {
    if (i > 0) node.append(el("br"));
    appendInline(node, line);
  });
  return node;
}

function codeBlock(lines, language) {
  const pre = el("pre");
  const code = el("code");
  if (language) {
    code.className = `language-${language.replace(/[^\w+-]/g, "")}`;
    pre.dataset.language = language;
  }
  code.textContent = lines.join("\n");
  pre.append(code);
  return pre;
}

// The whole text, rendered into a DocumentFragment.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null;
  let listKind = "";
  let quote = null;
  const flushPara = () => {
    if (para.length) (quote ?? out).append(paragraph(para));
    para = [];
  };
  const endList = () => {
    list = null;
    listKind = "";
  };
  const endQuote = () => {
    flushPara();
    quote = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flushPara();
      endList();
      endQuote();
      const marker = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
      out.append(codeBlock(body, fence[2]));
      continue;
    }
    if (!line.trim()) {
      flushPara();
      endList();
      endQuote();
      continue;
    }
    const quoted = line.match(QUOTE);
    if (quoted) {
      if (!quote) {
        flushPara();
        endList();
        quote = el("blockquote");
        out.append(quote);
      }
      para.push(quoted[1]);
      continue;
    }
    if (quote) endQuote();
    const heading = line.match(HEADING);
    if (heading) {
      flushPara();
      endList();
      const node = el(`h${Math.min(6, heading[1].length + 3)}`, "md-heading");
      appendInline(node, heading[2]);
      out.append(node);
      continue;
    }
    if (RULE.test(line)) {
      flushPara();
      endList();
      out.append(el("hr"));
      continue;
    }
    const bullet = line.match(BULLET);
    const numbered = bullet ? null : line.match(NUMBERED);
    if (bullet || numbered) {
      flushPara();
      const kind = bullet ? "ul" : "ol";
      if (!list || listKind !== kind) {
        list = el(kind);
        listKind = kind;
        out.append(list);
      }
      const item = el("li");
      appendInline(item, (bullet || numbered)[1]);
      list.append(item);
      continue;
    }
    if (list && /^\s{2,}\S/.test(line)) {
      // A continuation line of the last item.
      list.lastElementChild.append(" ");
      appendInline(list.lastElementChild, line.trim());
      continue;
    }
    endList();
    para.push(line);
  }
  flushPara();
  return out;
}
