// Backup Repository web console: small improvements only, every page works without this
// file. Copy buttons for command lines, and the dashboard's filter as you type.
"use strict";

function setUpCopyButtons() {
  if (!navigator.clipboard) {
    return;
  }
  for (const block of document.querySelectorAll("[data-copy-target]")) {
    const target = document.getElementById(block.getAttribute("data-copy-target"));
    if (!target) {
      continue;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button secondary copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy: " + (block.getAttribute("data-copy-label") || "command"));
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(target.textContent);
        button.textContent = "Copied";
      } catch (error) {
        button.textContent = "Select the text and copy it";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
    block.appendChild(button);
  }
}

function setUpLiveFilter() {
  const input = document.getElementById("filter-name");
  const rows = document.querySelectorAll("[data-collection]");
  if (!input || rows.length === 0) {
    return;
  }
  const count = document.getElementById("filter-count");
  input.addEventListener("input", () => {
    const wanted = input.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const match = row.getAttribute("data-collection").toLowerCase().includes(wanted);
      row.classList.toggle("hidden", !match);
      if (match) {
        shown += 1;
      }
    }
    if (count) {
      count.textContent = shown + (shown === 1 ? " collection" : " collections");
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpLiveFilter();
});
