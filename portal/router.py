"""The portal: every section's pages, and the table of their addresses."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from portal.audit import AuditPages
from portal.auth import AuthPages
from portal.imaging import ImagingPages
from portal.notices import NoticePages
from portal.patients import PatientPages
from portal.requests import RequestPages
from portal.shell import HERE
from portal.staff import StaffPages
from portal.teleconsults import ConsultPages


class Portal(
    AuthPages,
    PatientPages,
    RequestPages,
    ConsultPages,
    ImagingPages,
    AuditPages,
    StaffPages,
    NoticePages,
):
    """Every section's pages (one module each, on the shared `portal.shell.Shell`); the pages
    call the domains' commands (referral.commands, teleconsult.commands,
    alliance.directory.commands) and build no resource of their own."""

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)
        page = self._page
        r.add_api_route("/", self.home, methods=["GET"])
        r.add_api_route("/login", self.login_form, methods=["GET"])
        r.add_api_route("/login", self.login, methods=["POST"])
        r.add_api_route("/logout", page(self.logout, post=True), methods=["POST"])
        r.add_api_route("/lang/{code}", self.language, methods=["GET"])
        r.add_api_route("/favicon.ico", self.favicon, methods=["GET"])
        r.add_api_route("/notices", page(self.notices), methods=["GET"])
        r.add_api_route("/notices/stream", self.notice_stream, methods=["GET"])
        r.add_api_route("/notices/settings", page(self.notice_settings), methods=["GET"])
        r.add_api_route(
            "/notices/settings", page(self.notice_settings_save, post=True), methods=["POST"]
        )
        r.add_api_route("/patients", page(self.patients), methods=["GET"])
        r.add_api_route("/patients/new", page(self.patient_form), methods=["GET"])
        r.add_api_route("/patients/new", page(self.patient_create, post=True), methods=["POST"])
        r.add_api_route("/patients/{patient_id}", page(self.patient), methods=["GET"])
        r.add_api_route("/referrals", page(self.sent), methods=["GET"])
        r.add_api_route("/referrals/new", page(self.referral_form), methods=["GET"])
        r.add_api_route("/referrals/new", page(self.referral_create, post=True), methods=["POST"])
        r.add_api_route("/referrals/{task_id}", page(self.referral), methods=["GET"])
        r.add_api_route(
            "/referrals/{task_id}/move", page(self.referral_move, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/referrals/{task_id}/message", page(self.referral_message, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/referrals/{task_id}/studies",
            page(self.add_referral_studies, post=True),
            methods=["POST"],
        )
        r.add_api_route(
            "/referrals/{task_id}/down", page(self.send_down, post=True), methods=["POST"]
        )
        r.add_api_route("/teleconsults/new", page(self.teleconsult_form), methods=["GET"])
        r.add_api_route("/teleconsults/{task_id}/times", page(self.consult_times), methods=["GET"])
        r.add_api_route(
            "/teleconsults/{task_id}/book", page(self.consult_book, post=True), methods=["POST"]
        )
        r.add_api_route("/consults", page(self.consults), methods=["GET"])
        r.add_api_route(
            "/consults/{appointment_id}/accept",
            page(self.consult_accept, post=True),
            methods=["POST"],
        )
        r.add_api_route(
            "/referrals/{task_id}/opinion", page(self.consult_opinion, post=True), methods=["POST"]
        )
        r.add_api_route("/worklist", page(self.worklist), methods=["GET"])
        r.add_api_route("/imaging/upload", page(self.upload), methods=["GET"])
        r.add_api_route("/codes/diagnoses", page(self.diagnosis_search), methods=["GET"])
        r.add_api_route("/imaging/held", page(self.held), methods=["GET"])
        r.add_api_route(
            "/imaging/held/{study_uid}/link", page(self.held_link, post=True), methods=["POST"]
        )
        r.add_api_route("/viewer/tag-names", self.tag_names, methods=["GET"])
        r.add_api_route("/viewer/{study_uid}", page(self.viewer), methods=["GET"])
        r.add_api_route("/audit", page(self.audit), methods=["GET"])
        r.add_api_route("/audit/verify", page(self.audit_verify, post=True), methods=["POST"])
        r.add_api_route("/dashboard", page(self.dashboard), methods=["GET"])
        r.add_api_route("/admin/departments", page(self.departments), methods=["GET"])
        r.add_api_route(
            "/admin/departments", page(self.department_create, post=True), methods=["POST"]
        )
        r.add_api_route(
            "/admin/departments/{dept_id}/{action}",
            page(self.department_action, post=True),
            methods=["POST"],
        )
        r.add_api_route("/admin/calendar", page(self.calendar), methods=["GET"])
        r.add_api_route(
            "/admin/calendar/closures", page(self.closure_add, post=True), methods=["POST"]
        )
        r.add_api_route("/admin/calendar/hours", page(self.hours_save, post=True), methods=["POST"])
        r.add_api_route(
            "/admin/calendar/closures/{index}/remove",
            page(self.closure_remove, post=True),
            methods=["POST"],
        )
        r.add_api_route("/admin/staff", page(self.staff), methods=["GET"])
        r.add_api_route("/admin/staff", page(self.staff_create, post=True), methods=["POST"])
        r.add_api_route(
            "/admin/staff/{username}/practitioner", page(self.practitioner_form), methods=["GET"]
        )
        r.add_api_route(
            "/admin/staff/{username}/practitioner",
            page(self.practitioner_link, post=True),
            methods=["POST"],
        )
        r.add_api_route(
            "/admin/staff/{username}/{action}", page(self.staff_action, post=True), methods=["POST"]
        )
        return r

    async def favicon(self) -> FileResponse:
        """Browsers ask every site for /favicon.ico: the alliance's icon, not a 404 in the log."""
        return FileResponse(
            HERE / "static" / "favicon.ico",
            media_type="image/vnd.microsoft.icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    def static(self) -> StaticFiles:
        return StaticFiles(directory=str(HERE / "static"))
