// ESLint for the page's ES modules (static/js), run by scripts/eslint from the repository root:
// the recommended rules plus the conventions we write by (strict equality, const, no var) and
// those the page's Content-Security-Policy demands (no eval or string-built functions).
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["static/vendor/**"] },
  js.configs.recommended,
  {
    files: ["static/js/**/*.js"],
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      globals: globals.browser,
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      eqeqeq: ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-shadow": ["error", { builtinGlobals: false }],
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "none" }],
      "no-use-before-define": ["error", { functions: false, classes: false, variables: false }], // same scope only
      "no-implicit-globals": "error",
      "no-restricted-syntax": ["error", {
        selector: "AssignmentExpression[left.property.name='innerHTML']",
        message: "build elements with ui.js h() (text only): innerHTML would parse tokens as HTML",
      }],
    },
  },
];
