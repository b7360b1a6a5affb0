// The page's behaviour: labels each line of the text box with POST v1/classify and draws the answers with bars.
"use strict";

const TEXTS = {
  zh: {
    title: "外卖评论情感分类", prompt: "每行一条评论：", placeholder: "例如：送餐很快，饭菜还是热的",
    classify: "分类", example: "示例", review: "评论", tuned: "微调模型", base: "基座模型",
    working: "正在分类……", noReviews: "请输入至少一条评论（每行一条）。", model: "模型",
    truncated: (count) => `${count} 条评论超过训练时的最大长度，已按训练时的方式截断。`,
    positive: "积极", negative: "消极",
  },
  en: {
    title: "Food-delivery review sentiment", prompt: "One review per line:",
    placeholder: "e.g. 送餐很快，饭菜还是热的", classify: "Classify", example: "Example", review: "Review",
    tuned: "Tuned model", base: "Base model", working: "Classifying…",
    noReviews: "Type at least one review (one per line).", model: "Model",
    truncated: (count) => `${count} reviews were longer than the training run's limit and were cut as in training.`,
    positive: "positive", negative: "negative",
  },
};
const EXAMPLES = [
  "送餐很快，饭菜还是热的，好评",
  "等了一个半小时，汤都洒了，再也不点了",
  "味道一般，分量还可以",
];
const CLASSES = ["positive", "negative"]; // by the label word's place: the training run lists the positive first

function pageLanguage() {
  const asked = new URLSearchParams(window.location.search).get("lang");
  if (asked in TEXTS) return asked;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

const language = pageLanguage();
const texts = TEXTS[language];
let health = null;

function labelClass(label) {
  const index = health ? health.label_words.indexOf(label) : -1;
  return health && health.label_words.length === 2 && index >= 0 ? CLASSES[index] : "other";
}

function labelText(label) {
  const kind = labelClass(label);
  if (kind === "other" || language === "zh") return label;
  return `${texts[kind]} (${label})`;
}

function answerCell(answer) {
  const cell = document.createElement("td");
  cell.className = `answer ${labelClass(answer.label)}`;
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = labelText(answer.label);
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = `${(answer.probability * 100).toFixed(1)}%`;
  bar.appendChild(fill);
  const probability = document.createElement("div");
  probability.className = "probability";
  probability.textContent = `${(answer.probability * 100).toFixed(1)}%`;
  cell.dataset.label = answer.label;
  cell.dataset.probability = String(answer.probability);
  cell.append(label, bar, probability);
  return cell;
}

function showMessage(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

function showResults(answer) {
  const compare = answer.predictions.some((prediction) => prediction.base);
  const head = document.getElementById("results-head");
  const columns = [texts.review, ...(compare ? [texts.base] : []), texts.tuned];
  head.replaceChildren(...columns.map((name) => Object.assign(document.createElement("th"), { textContent: name })));
  const body = document.getElementById("results-body");
  body.replaceChildren(...answer.predictions.map((prediction) => {
    const row = document.createElement("tr");
    row.className = "result";
    const review = Object.assign(document.createElement("td"), { textContent: prediction.review, className: "review" });
    row.append(review, ...(compare ? [answerCell(prediction.base)] : []), answerCell(prediction));
    return row;
  }));
  document.getElementById("results").hidden = false;
  showMessage(answer.truncated ? texts.truncated(answer.truncated) : "", false);
}

async function classify() {
  const reviews = document.getElementById("reviews").value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (reviews.length === 0) {
    showMessage(texts.noReviews, true);
    return;
  }
  const button = document.getElementById("classify");
  button.disabled = true;
  showMessage(texts.working, false);
  try {
    await healthLoaded; // the label words decide the bars' colours
    const response = await fetch("v1/classify", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reviews }),
    });
    const answer = await response.json();
    if (!response.ok) {
      showMessage(`${response.status}: ${answer.detail}`, true);
      return;
    }
    showResults(answer);
  } catch (error) {
    showMessage(String(error), true);
  } finally {
    button.disabled = false;
  }
}

async function loadHealth() {
  const response = await fetch("health");
  health = await response.json();
  const base = health.base_model ? `, ${texts.base} ${health.base_model}` : "";
  document.getElementById("model").textContent =
    `${texts.model} ${health.model}${base} (${health.device}, ${health.dtype})`;
}

function translate() {
  document.documentElement.lang = language;
  document.title = texts.title;
  for (const element of document.querySelectorAll("[data-text]")) element.textContent = texts[element.dataset.text];
  for (const element of document.querySelectorAll("[data-placeholder]")) {
    element.placeholder = texts[element.dataset.placeholder];
  }
}

translate();
document.getElementById("example").addEventListener("click", () => {
  document.getElementById("reviews").value = EXAMPLES.join("\n");
});
document.getElementById("classify").addEventListener("click", classify);
const healthLoaded = loadHealth().catch((error) => showMessage(String(error), true));
