// The console's only script: open and close dialogs, count down a reveal session.
// Native <dialog>: showModal() makes the page behind inert (focus stays in the dialog)
// and Escape closes it.
"use strict";

document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  const opener = target && target.closest("[data-open]");
  if (opener) {
    const dialog = document.getElementById(opener.getAttribute("data-open"));
    if (dialog instanceof HTMLDialogElement) {
      const inside = opener.closest("dialog");
      if (inside) inside.close();
      dialog.showModal();
      const first = dialog.querySelector("input:not([type=hidden]), textarea, select, button");
      if (first) first.focus();
    }
    return;
  }
  const closer = target && target.closest("[data-close]");
  if (closer) {
    const dialog = closer.closest("dialog");
    if (dialog) dialog.close();
  }
});

// Tab and Shift+Tab cycle inside an open dialog instead of leaving it for the browser's own UI.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Tab") return;
  const dialog = document.querySelector("dialog[open]");
  if (!dialog) return;
  const focusable = Array.from(dialog.querySelectorAll(
    "a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]"))
    .filter((e) => !e.disabled && e.getAttribute("tabindex") !== "-1" && e.getClientRects().length);
  if (!focusable.length) return;
  const first = focusable[0];
  const last = focusable[focusable.length - 1];
  const inside = dialog.contains(document.activeElement);
  if (event.shiftKey && (document.activeElement === first || !inside)) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && (document.activeElement === last || !inside)) {
    event.preventDefault();
    first.focus();
  }
});

function countDown() {
  for (const element of document.querySelectorAll("[data-remaining]")) {
    const left = Math.floor((Date.parse(element.getAttribute("data-remaining")) - Date.now()) / 1000);
    if (left <= 0) {
      element.textContent = "ended";
      window.location.reload();
      return;
    }
    element.textContent = `${Math.floor(left / 60)} min ${left % 60} s left`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.querySelector("[data-remaining]")) {
    countDown();
    window.setInterval(countDown, 1000);
  }
});
